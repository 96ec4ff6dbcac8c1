// End-to-end encryption in the browser chat, against the Rust clients'
// code (examples/common/e2ee.rs). Run by tests/web_chat.rs, which starts
// the broker and a Rust member of the room:
//   node e2ee.test.mjs URL VECTOR_JSON PASSPHRASE
// 1. the page computes topics.md's test vector (key and sealed body) and
//    opens the vector's sealed body;
// 2. alice joins with PASSPHRASE and sends "sealed from the page" (the Rust
//    side reads it off the broker, sealed, and opens it);
// 3. the page shows bob's sealed message from Rust in clear, and carol's
//    plain one as not readable;
// 4. eve joins with another passphrase: she reads none of it;
// 5. alice reloads: history (sealed bodies in CBOR) opens again.
// Exits 0 when every step held; otherwise prints the failed step and the
// pages' console, and exits 1.
import puppeteer from "puppeteer-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, vectorJson, passphrase] = process.argv.slice(2);
const vector = JSON.parse(vectorJson);
const WAIT_MS = 30000;
const NOT_READABLE = "[not readable: wrong passphrase or not encrypted]";
const log = [];
const step = (what) => {
  log.push(`step: ${what}`);
  console.error(`step: ${what}`);
};

const profile = mkdtempSync(join(tmpdir(), "roomq-chromium-"));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  userDataDir: profile,
  // As in chat.test.mjs: root needs --no-sandbox; no calls to Google.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
  ],
});
const done = async (code) => {
  await browser.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
};
setTimeout(() => {
  console.error("the browser test did not finish within 3 minutes");
  console.error(log.join("\n"));
  done(1);
}, 180000).unref();

async function openPage(name) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on("console", (m) => log.push(`${name} console ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log.push(`${name} page error: ${e.message}`));
  page.on("requestfailed", (r) => log.push(`${name} request failed: ${r.url()} ${r.failure()?.errorText}`));
  return page;
}

async function login(page, username, secret) {
  await page.goto(url, { waitUntil: "load" });
  await page.$eval("#username", (el) => (el.value = ""));
  await page.type("#username", username);
  await page.$eval("#room", (el) => (el.value = ""));
  await page.type("#room", vector.room);
  await page.type("#passphrase", secret);
  await page.click('#login button[type="submit"]');
  await page.waitForSelector('#status[data-state="connected"]');
}

const waitForMessage = (page, sender, text) =>
  page.waitForFunction(
    (sender, text) =>
      Array.from(document.querySelectorAll("#messages li[data-seq]")).some(
        (li) => li.dataset.sender === sender && li.querySelector(".body").textContent === text,
      ),
    { timeout: WAIT_MS },
    sender,
    text,
  );

try {
  const alice = await openPage("alice");

  step("the page computes topics.md's test vector");
  await alice.goto(url, { waitUntil: "load" });
  const got = await alice.evaluate(async (v) => {
    const key = await RoomqE2ee.roomKey(v.passphrase, v.room);
    return {
      key: key.hex(),
      sealed: RoomqE2ee.hex(key.sealWithNonce(v.sender, RoomqE2ee.fromHex(v.nonce), v.plaintext)),
      opened: key.open(v.sender, RoomqE2ee.fromHex(v.sealed)),
      otherSender: key.open("mallory", RoomqE2ee.fromHex(v.sealed)),
    };
  }, vector);
  if (got.key !== vector.key) throw new Error(`room key ${got.key}, topics.md says ${vector.key}`);
  if (got.sealed !== vector.sealed) throw new Error(`sealed ${got.sealed}, topics.md says ${vector.sealed}`);
  if (got.opened !== vector.plaintext) throw new Error(`the vector opened as ${JSON.stringify(got.opened)}`);
  if (got.otherSender !== null) throw new Error("the vector opened under another sender's name");

  step("alice joins with the passphrase and sends a sealed message");
  await login(alice, "alice", passphrase);
  await alice.type("#message", "sealed from the page");
  await alice.keyboard.press("Enter");
  // The broker's copy comes back to her and opens.
  await waitForMessage(alice, "alice", "sealed from the page");

  step("bob's sealed message from the Rust client shows in clear");
  await waitForMessage(alice, "bob", "sealed from rust");

  step("carol's plain message shows as not readable");
  await waitForMessage(alice, "carol", NOT_READABLE);

  step("eve, with another passphrase, reads none of the history");
  const eve = await openPage("eve");
  await login(eve, "eve", `${passphrase} (wrong)`);
  await eve.waitForFunction(
    () => document.querySelectorAll("#messages li[data-seq]").length >= 3,
    { timeout: WAIT_MS },
  );
  const seen = await eve.$$eval("#messages li[data-seq] .body", (bodies) => bodies.map((b) => b.textContent));
  if (seen.some((text) => text !== "[not readable: wrong passphrase or not encrypted]")) {
    throw new Error(`eve read ${JSON.stringify(seen)}`);
  }

  step("alice reloads the page: the history opens with her passphrase");
  await login(alice, "alice", passphrase);
  await alice.waitForFunction(
    () => document.querySelectorAll("#messages li[data-seq]").length >= 3,
    { timeout: WAIT_MS },
  );
  await waitForMessage(alice, "alice", "sealed from the page");
  await waitForMessage(alice, "bob", "sealed from rust");
  await waitForMessage(alice, "carol", NOT_READABLE);

  console.error("browser e2ee: every step held");
  await done(0);
} catch (e) {
  console.error(`FAILED: ${e.message}`);
  console.error(log.join("\n"));
  await done(1);
}
