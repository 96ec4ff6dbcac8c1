// The browser chat in headless Chromium (Debian's `chromium`, driven by
// puppeteer-core). Run by tests/web_chat.rs, which starts the broker:
//   node chat.test.mjs SCENARIO URL PARAMS_JSON
// SCENARIO is one of the functions in `scenarios` below; PARAMS_JSON holds
// its credentials (and the screenshot's path). The `chat` scenario prints
// `restart` on stdout and waits for a line on stdin before going on.
// Exits 0 when every step held; otherwise prints the failed step and the
// pages' console, and exits 1.
import puppeteer from "puppeteer-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const [scenario, url, paramsJson] = process.argv.slice(2);
const params = JSON.parse(paramsJson || "{}");
const WAIT_MS = 20000;
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
  // Deleting and banning ask "are you sure?".
  page.on("dialog", (d) => d.accept());
  return page;
}

/** Logs in and waits for `until` (by default: connected). */
async function login(page, { username, password, room }, until = '#status[data-state="connected"]') {
  await page.goto(url, { waitUntil: "load" });
  await page.$eval("#username", (el) => (el.value = ""));
  await page.type("#username", username);
  if (password) await page.type("#password", password);
  await page.$eval("#room", (el) => (el.value = ""));
  await page.type("#room", room);
  await page.click('#login button[type="submit"]');
  await page.waitForSelector(until).catch(async (e) => {
    const status = await page.$eval("#status", (el) => `${el.dataset.state}: ${el.textContent}`);
    throw new Error(`${e.message}; the header says "${status}"`);
  });
}

const check = (ok, what) => {
  if (!ok) throw new Error(what);
};
const textOf = (page, selector) => page.$eval(selector, (el) => el.textContent);
const visible = (page, selector) =>
  page.$eval(selector, (el) => el.offsetParent !== null && !el.closest("[hidden]")).catch(() => false);
const waitForMessage = (page, sender, text) =>
  page.waitForFunction(
    (sender, text) =>
      Array.from(document.querySelectorAll("#messages li[data-seq]")).some(
        (li) => li.dataset.sender === sender && li.querySelector(".body")?.textContent === text,
      ),
    { timeout: WAIT_MS },
    sender,
    text,
  );
/** The seq of `sender`'s message that reads `text`. */
const seqOf = (page, sender, text) =>
  page.$$eval(
    "#messages li[data-seq]",
    (items, sender, text) =>
      items.find((li) => li.dataset.sender === sender && li.querySelector(".body")?.textContent === text)?.dataset.seq,
    sender,
    text,
  );
/**
 * Waits until message `seq` on `page` shows what `want` says: `emoji` with
 * `count`, `text`, `edited`, `deleted` (the page's CSP allows no eval, so
 * the check is data, not a function).
 */
const waitForItem = (page, seq, want) =>
  page.waitForFunction(
    (seq, want) => {
      const li = document.querySelector(`#messages li[data-seq="${seq}"]`);
      if (!li) return false;
      const reaction = want.emoji && li.querySelector(`.reactions [data-emoji="${want.emoji}"]`);
      if (want.emoji && (reaction ? reaction.dataset.count : "0") !== String(want.count)) return false;
      if (want.text !== undefined && li.querySelector(".body")?.textContent !== want.text) return false;
      if (want.edited && !li.querySelector(".edited")) return false;
      if (want.deleted && !(li.classList.contains("deleted") && li.textContent.includes("message deleted"))) return false;
      return true;
    },
    { timeout: WAIT_MS },
    seq,
    want,
  );
const connects = (page) => page.$eval("#status", (el) => Number(el.dataset.connects));

async function send(page, text) {
  await page.type("#message", text);
  await page.keyboard.press("Enter");
}

/** The refusal the page shows instead of the room: its text, with no composer and no reconnecting. */
async function expectRefusal(page, words) {
  await page.waitForSelector("#notice:not([hidden])").catch(async (e) => {
    const status = await page.$eval("#status", (el) => `${el.dataset.state}: ${el.textContent}`);
    throw new Error(`${e.message}; the header says "${status}"`);
  });
  const text = await textOf(page, "#notice-text");
  check(text.includes(words), `the notice reads ${JSON.stringify(text)}, not ${JSON.stringify(words)}`);
  check(!(await visible(page, "#composer")), "the composer still shows");
  const [state, status] = await page.$eval("#status", (el) => [el.dataset.state, el.textContent]);
  check(state === "refused", `the status is ${state} ("${status}"), not refused`);
  step("the way back: the room picker");
  await page.click("#back");
  await page.waitForSelector("#login:not([hidden])");
  check(!(await visible(page, "#chat")), "the room still shows after going back");
}

const scenarios = {
  /** A non-member opens a closed room; a member is banned by a moderator. */
  async refusals({ carolToken, bobToken, modToken }) {
    const carol = await openPage("carol");
    step("carol, no member of the closed room lobby, opens it: told so, no composer, no reconnecting dot");
    await login(carol, { username: "", password: carolToken, room: "lobby" }, "#notice:not([hidden])");
    await expectRefusal(carol, "You are not a member of lobby");

    step("bob and the moderator mod are in lobby");
    const bob = await openPage("bob");
    const mod = await openPage("mod");
    await login(bob, { username: "", password: bobToken, room: "lobby" });
    await login(mod, { username: "", password: modToken, room: "lobby" });
    await send(bob, "before the ban");
    await waitForMessage(mod, "bob", "before the ban");

    step("mod bans bob from the member list: the broker says done");
    await mod.click('#members li[data-user="bob"] button.ban');
    await mod.waitForFunction(() => document.querySelector("#info").textContent.includes("bob is banned"));

    step("bob's page says he was banned (at once, or when he next posts)");
    await bob.evaluate(() => {
      if (document.querySelector("#notice").hidden) {
        document.querySelector("#message").value = "after the ban";
        document.querySelector("#composer").requestSubmit();
      }
    });
    await expectRefusal(bob, "You were banned from lobby");
    await done(0);
  },

  /** Two users who only joined an open room see each other. */
  async members() {
    const ann = await openPage("ann");
    const ben = await openPage("ben");
    step("ann and ben open the open room plaza, and post nothing");
    await login(ann, { username: "ann", room: "plaza" });
    await login(ben, { username: "ben", room: "plaza" });
    step("each sees the other online in the member list");
    await ann.waitForSelector('#members li[data-user="ben"][data-status="online"]');
    await ben.waitForSelector('#members li[data-user="ann"][data-status="online"]');
    await done(0);
  },

  /**
   * alice logs in with a password, bob with a token; presence, typing, a
   * message each way, a receipt, history after a reload, both pages
   * reconnecting after a broker restart, then reactions, an edit and a
   * delete, live and after a reload; the README's screenshot; and a
   * moderator's delete of another's message.
   */
  async chat({ screenshot, alicePassword, bobToken }) {
    const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
    const alice = await openPage("alice");
    const bob = await openPage("bob");

    step("alice logs in with a password, bob with a token, both in room lobby");
    await login(alice, { username: "alice", password: alicePassword, room: "lobby" });
    // A token names its user: bob leaves the name empty.
    await login(bob, { username: "", password: bobToken, room: "lobby" });
    check((await textOf(bob, "#me")) === "bob", "bob's page does not show him as bob");

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
    check(/\d/.test(time), `the message shows no time: ${JSON.stringify(time)}`);
    await alice.waitForFunction(() => document.querySelector("#typing").textContent === "");

    step("alice has read it: bob sees the read receipt");
    await bob.waitForFunction(() =>
      Array.from(document.querySelectorAll("#messages li")).some((li) =>
        li.querySelector(".receipts")?.textContent.includes("Seen by alice"),
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
    check(!answer.done, "the test harness closed stdin instead of restarting the broker");
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

    await lifecycle(alice, bob, bobToken);

    step("screenshot");
    await alice.bringToFront();
    // The actions of a message show while it is pointed at.
    const still = await seqOf(alice, "alice", "still here?");
    await alice.hover(`#messages li[data-seq="${still}"] .body`);
    await alice.screenshot({ path: screenshot });

    step("alice moderates lobby (by the configuration; her page asked the broker): she deletes bob's message");
    await alice.waitForSelector('#members li[data-user="bob"] button.ban');
    check(!(await bob.$('#members li[data-user="alice"] button.ban')), "bob's page offers moderation");
    await send(bob, "a message for the moderator");
    await waitForMessage(alice, "bob", "a message for the moderator");
    const modded = await seqOf(alice, "bob", "a message for the moderator");
    await alice.click(`#messages li[data-seq="${modded}"] button.delete`);
    await waitForItem(bob, modded, { deleted: true });
    await alice.waitForFunction(() => document.querySelector("#info").textContent.includes("is deleted"));
    console.error("browser chat: every step held");
    await done(0);
  },
};

/** Reactions, an edit and a delete between alice and bob, live and from history. */
async function lifecycle(alice, bob, bobToken) {
  const hello = await seqOf(alice, "bob", "hello alice");
  const reaction = (emoji) => `#messages li[data-seq="${hello}"] .reactions button[data-emoji="${emoji}"]`;

  // Counts as both pages show them; each click waits for its own page's
  // change first (the item is redrawn when the room event comes back).
  const counts = async (emoji, count) => {
    for (const page of [alice, bob]) {
      await waitForItem(page, hello, { emoji, count });
    }
  };
  step("alice reacts 👍 and 🎉 to bob's message: both see the counts");
  await alice.click(`#messages li[data-seq="${hello}"] .react button[data-emoji="👍"]`);
  await counts("👍", 1);
  await alice.click(`#messages li[data-seq="${hello}"] .react button[data-emoji="🎉"]`);
  await counts("🎉", 1);

  step("bob adds his 👍 (2, his own marked), takes it back (1), and adds it again (2)");
  await bob.click(reaction("👍"));
  await counts("👍", 2);
  check((await bob.$eval(reaction("👍"), (el) => el.getAttribute("aria-pressed"))) === "true", "bob's own reaction is not marked");
  await bob.click(reaction("👍"));
  await counts("👍", 1);
  await bob.click(reaction("👍"));
  await counts("👍", 2);

  step("alice edits her message: bob sees the new text and (edited)");
  const hi = await seqOf(alice, "alice", "hi bob");
  check(!(await bob.$(`#messages li[data-seq="${hi}"] button.edit`)), "bob may edit alice's message");
  await alice.click(`#messages li[data-seq="${hi}"] button.edit`);
  await alice.$eval(`#messages li[data-seq="${hi}"] form.edit input`, (el) => (el.value = ""));
  await alice.type(`#messages li[data-seq="${hi}"] form.edit input`, "hi bob, welcome");
  await alice.keyboard.press("Enter");
  await waitForItem(bob, hi, { text: "hi bob, welcome", edited: true });

  step("alice sends a message and deletes it: bob sees a tombstone");
  await send(alice, "oops, wrong room");
  await waitForMessage(bob, "alice", "oops, wrong room");
  const oops = await seqOf(alice, "alice", "oops, wrong room");
  await alice.click(`#messages li[data-seq="${oops}"] button.delete`);
  await waitForItem(bob, oops, { deleted: true });
  check(!(await bob.$(`#messages li[data-seq="${oops}"] .react`)), "a deleted message still takes reactions");

  step("bob reloads: history shows the edit, the tombstone and the reactions");
  await bob.reload({ waitUntil: "load" });
  await bob.waitForSelector("#login:not([hidden])");
  await login(bob, { username: "", password: bobToken, room: "lobby" });
  await waitForItem(bob, hi, { text: "hi bob, welcome", edited: true });
  await waitForItem(bob, oops, { deleted: true });
  await waitForItem(bob, hello, { emoji: "👍", count: 2 });
  await waitForItem(bob, hello, { emoji: "🎉", count: 1 });
  check((await bob.$eval(reaction("👍"), (el) => el.getAttribute("aria-pressed"))) === "true", "history lost bob's own reaction");
  check((await bob.$eval(reaction("🎉"), (el) => el.getAttribute("aria-pressed"))) === "false", "alice's reaction shows as bob's");
}

try {
  const run = scenarios[scenario];
  check(run, `no scenario ${JSON.stringify(scenario)}`);
  await run(params);
} catch (e) {
  console.error(`FAILED: ${e.message}`);
  console.error(log.join("\n"));
  await done(1);
}
