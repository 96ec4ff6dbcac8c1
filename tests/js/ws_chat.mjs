// A browser-style chat client: MQTT.js over WebSocket (sub-protocol mqtt).
// Usage: node ws_chat.mjs URL USER ROOM [PROTOCOL_VERSION]
// Joins the room, says hello, prints (as JSON lines) every message it
// receives from someone else, and exits after the first one.
import mqtt from "mqtt";

const [url, user, room, version] = process.argv.slice(2);
const client = mqtt.connect(url, {
  clientId: user,
  protocolVersion: Number(version || 5),
  reconnectPeriod: 0,
  rejectUnauthorized: false,
});
const fail = (why) => {
  console.error(why);
  process.exit(1);
};
setTimeout(() => fail("timed out"), 15000);
client.on("error", (e) => fail(String(e)));
client.on("connect", async () => {
  await client.subscribeAsync(`rooms/${room}/msg/+`, { qos: 1 });
  console.log(JSON.stringify({ event: "joined" }));
  await client.publishAsync(`rooms/${room}/msg/${user}`, `hello from ${user}`, { qos: 1 });
});
client.on("message", (topic, payload, packet) => {
  if (topic === `rooms/${room}/msg/${user}`) return;
  const props = packet.properties?.userProperties ?? {};
  console.log(JSON.stringify({ event: "message", topic, text: payload.toString(), seq: props.seq ?? null }));
  // Like a closed browser tab: no goodbye needed.
  process.exit(0);
});
