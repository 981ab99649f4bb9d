// Opens seqflow's dashboard in headless Chromium and checks that it follows the run:
// the counters tick, the charts draw, the highest-score table fills, a click follows a key,
// the views' tables show; then takes a screenshot. With --report, URL is a report page
// (file://...): its charts, distributions and key plots must be drawn.
//   node tests/browser/dashboard.mjs URL SCREENSHOT.png [--expect-views | --report]
// Exit 0 with a JSON summary on stdout, or 1 with the reason.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, shot, ...flags] = process.argv.slice(2);
const expectViews = flags.includes("--expect-views");
const report = flags.includes("--report");
const fail = (why) => { console.error(`dashboard check failed: ${why}`); process.exit(1); };
if (!url || !shot) fail("usage: dashboard.mjs URL SCREENSHOT.png [--expect-views]");

// Without the background-networking flags Chromium floods a closed network with refused
// connections; a fresh profile keeps runs independent.
// The profile goes with the process, however it ends (fail() exits at once).
const profile = mkdtempSync(join(tmpdir(), "seqflow-chromium-"));
process.on("exit", () => rmSync(profile, { recursive: true, force: true }));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 1300 },
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  if (report) {
    await page.waitForFunction(() => document.querySelectorAll("#r-rate polyline").length >= 1, null, { timeout: 15000 });
    const bars = await page.locator("#r-dist-0 rect").count();
    const keys = await page.locator("svg[id^=r-key-] polyline").count();
    if (bars < 5) fail(`the distribution has ${bars} bars`);
    if (keys < 1) fail("no key is plotted");
    await page.screenshot({ path: shot, fullPage: true });
    if (errors.length) fail(`page errors: ${errors.join("; ")}`);
    console.log(JSON.stringify({ bars, keys }));
    process.exit(0);
  }
  await page.waitForSelector("#status.live", { timeout: 15000 });
  const rows = async () => Number((await page.locator(".tile .v").first().textContent()).replace(/[^0-9.]/g, ""))
    * ((await page.locator(".tile .v").first().textContent()).includes("M") ? 1e6 : (await page.locator(".tile .v").first().textContent()).includes("k") ? 1e3 : 1);
  const first = await rows();
  await page.waitForFunction(() => document.querySelectorAll("#c-rate polyline").length >= 1, null, { timeout: 15000 });
  // The counters move while data comes in.
  const deadline = Date.now() + 15000;
  let later = first;
  while (later <= first && Date.now() < deadline) { await page.waitForTimeout(500); later = await rows(); }
  if (later <= first) fail(`rows read stayed at ${first}`);
  await page.waitForFunction(() => document.querySelectorAll("#top td.follow").length >= 1, null, { timeout: 15000 });
  const key = await page.locator("#top td.follow").first().textContent();
  await page.locator("#top td.follow").first().click();
  await page.waitForFunction((k) => [...document.querySelectorAll("#picked .chip")].some((c) => c.textContent.includes(k)), key, { timeout: 10000 });
  await page.waitForFunction(() => document.querySelectorAll("#watched svg polyline").length >= 1, null, { timeout: 15000 });
  let views = 0;
  if (expectViews) {
    await page.waitForFunction(() => document.querySelectorAll("#views table tr").length >= 2, null, { timeout: 15000 });
    views = await page.locator("#views section").count();
  }
  await page.waitForTimeout(1500);
  await page.screenshot({ path: shot, fullPage: true });
  if (errors.length) fail(`page errors: ${errors.join("; ")}`);
  console.log(JSON.stringify({ rows_first: first, rows_later: later, followed: key, views }));
} finally {
  await browser.close();
}
