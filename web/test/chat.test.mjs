// The browser chat in headless Chromium (Debian's `chromium`, driven by
// puppeteer-core). Run by tests/web_chat.rs, which starts the broker and
// restarts it when this script asks:
//   node chat.test.mjs URL SCREENSHOT ALICE_PASSWORD BOB_TOKEN
// prints `restart` on stdout and waits for a line on stdin before going on.
// Exits 0 when every step held; otherwise prints the failed step and the
// pages' console, and exits 1.
import puppeteer from "puppeteer-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const [url, screenshot, alicePassword, bobToken] = process.argv.slice(2);
const WAIT_MS = 20000;
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
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
  // As root Chromium needs --no-sandbox; the rest keeps it from calling
  // Google's hosts, which this machine's closed network refuses.
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
  // Two users need two cookie and storage jars: one browser context each.
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  await page.setViewport({ width: 960, height: 640 });
  page.on("console", (m) => log.push(`${name} console ${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log.push(`${name} page error: ${e.message}`));
  page.on("requestfailed", (r) => log.push(`${name} request failed: ${r.url()} ${r.failure()?.errorText}`));
  return page;
}

async function login(page, { username, password, room }) {
  await page.goto(url, { waitUntil: "load" });
  await page.$eval("#username", (el) => (el.value = ""));
  await page.type("#username", username);
  await page.type("#password", password);
  await page.$eval("#room", (el) => (el.value = ""));
  await page.type("#room", room);
  await page.click('#login button[type="submit"]');
  await page.waitForSelector('#status[data-state="connected"]');
}

const textOf = (page, selector) => page.$eval(selector, (el) => el.textContent);
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
const connects = (page) => page.$eval("#status", (el) => Number(el.dataset.connects));

async function send(page, text) {
  await page.type("#message", text);
  await page.keyboard.press("Enter");
}

try {
  const alice = await openPage("alice");
  const bob = await openPage("bob");

  step("alice logs in with a password, bob with a token, both in room lobby");
  await login(alice, { username: "alice", password: alicePassword, room: "lobby" });
  // A token names its user: bob leaves the name empty.
  await login(bob, { username: "", password: bobToken, room: "lobby" });
  if ((await textOf(bob, "#me")) !== "bob") throw new Error("bob's page does not show him as bob");

  step("each sees the other online in the member list");
  await alice.waitForSelector('#members li[data-user="bob"][data-status="online"]');
  await bob.waitForSelector('#members li[data-user="alice"][data-status="online"]');

  step("bob types: alice sees the typing indicator");
  await bob.type("#message", "hello al");
  await alice.waitForFunction(() => document.querySelector("#typing").textContent.includes("bob is typing"));

  step("bob sends: the message appears on alice's page with sender and time");
  await bob.type("#message", "ice");
  await bob.keyboard.press("Enter");
  await waitForMessage(alice, "bob", "hello alice");
  const time = await alice.$eval('#messages li[data-sender="bob"] time', (el) => el.textContent);
  if (!/\d/.test(time)) throw new Error(`the message shows no time: ${JSON.stringify(time)}`);
  await alice.waitForFunction(() => document.querySelector("#typing").textContent === "");

  step("alice has read it: bob sees the read receipt");
  await bob.waitForFunction(() =>
    Array.from(document.querySelectorAll("#messages li")).some((li) =>
      li.querySelector(".receipts").textContent.includes("Seen by alice"),
    ),
  );

  step("alice answers: bob sees it");
  await send(alice, "hi bob");
  await waitForMessage(bob, "alice", "hi bob");

  step("bob reloads the page: the earlier messages come back from history");
  await bob.reload({ waitUntil: "load" });
  await bob.waitForSelector("#login:not([hidden])");
  await login(bob, { username: "", password: bobToken, room: "lobby" });
  await waitForMessage(bob, "bob", "hello alice");
  await waitForMessage(bob, "alice", "hi bob");

  step("the broker restarts: both pages reconnect");
  const before = [await connects(alice), await connects(bob)];
  console.log("restart");
  const answer = await stdinLines.next();
  if (answer.done) throw new Error("the test harness closed stdin instead of restarting the broker");
  for (const [page, was] of [
    [alice, before[0]],
    [bob, before[1]],
  ]) {
    await page.waitForFunction(
      (was) => {
        const status = document.querySelector("#status");
        return Number(status.dataset.connects) > was && status.dataset.state === "connected";
      },
      { timeout: 30000 },
      was,
    );
  }

  step("after the restart a new message gets through, both ways");
  await send(alice, "still here?");
  await waitForMessage(bob, "alice", "still here?");
  await send(bob, "yes, after the restart");
  await waitForMessage(alice, "bob", "yes, after the restart");
  await alice.waitForSelector('#members li[data-user="bob"][data-status="online"]');

  step("bob has read alice's last message: alice sees the receipt under it");
  await bob.bringToFront();
  await alice.waitForFunction(() => {
    const mine = Array.from(document.querySelectorAll('#messages li[data-sender="alice"]'));
    const last = mine[mine.length - 1];
    return last && last.textContent.includes("still here?") && last.querySelector(".receipts").textContent === "Seen by bob";
  });

  step("screenshot");
  await alice.bringToFront();
  await alice.screenshot({ path: screenshot });
  console.error("browser chat: every step held");
  await done(0);
} catch (e) {
  console.error(`FAILED: ${e.message}`);
  console.error(log.join("\n"));
  await done(1);
}
