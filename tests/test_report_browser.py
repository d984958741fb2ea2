"""report.html and the convolution demo in a real browser: headless Chromium driven by Selenium
through Debian's chromedriver (`apt-get install chromium chromium-driver`; .ci/run installs them).

Each page must load with no console error, request nothing but its own file (images are embedded),
and show every image; the report's headline accuracy must be results.json's; in the demo the next
button and the arrow keys step, and a click on an output cell shows that cell's window.

Skipped, with the reason, where Chromium, chromedriver or the selenium package is missing.
Set CNNKIT_CHROMIUM / CNNKIT_CHROMEDRIVER to use other binaries.
"""
import json
import os
import shutil
import tempfile

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CNNKIT_CHROMIUM") or next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
CHROMEDRIVER = os.environ.get("CNNKIT_CHROMEDRIVER") or shutil.which("chromedriver")
# The closed network refuses Chromium's own background connections; these flags stop them, so
# the only requests left are the page's.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1300,1000")
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "http://localhost", "http://127.0.0.1")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no Chromium/chromedriver found: `apt-get install chromium chromium-driver` (Debian) to run the "
                    "browser tests")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the selenium package is not installed "
                                    "(pip install selenium, or python3 dev.py test)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="cnnkit-chromium-")
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    driver.get("about:blank")  # away from the start page and its chrome:// resources
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path):
    """Load ``path`` and return ``(console errors, URLs the page requested)``: the page itself and
    everything its document asked for (images, scripts, fonts, fetches)."""
    driver.get_log("browser"), driver.get_log("performance")  # drop what earlier pages left
    url = path.resolve().as_uri()
    driver.get(url)
    assert driver.execute_script("return document.readyState") == "complete"
    errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent" and message["params"].get("documentURL") == url:
            urls.append(message["params"]["request"]["url"])
    return errors, urls


def images_loaded(driver):
    return driver.execute_script(
        "const imgs = Array.from(document.images);"
        "return [imgs.length, imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)];")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run (the bundled digits, 600 training images, 2 epochs: seconds) with diagnostics,
    and its report with one activation example."""
    from cnnkit.cli import main
    from cnnkit.viz.report import write_report

    out = tmp_path_factory.mktemp("browser-run")
    assert main(["train", "--epochs", "2", "--limit", "600", "--out", str(out), "--no-progress", "--diagnostics", "5",
                 "--no-report"]) == 0
    write_report(out, examples=1)
    return out


def test_report_page_in_chromium(browser, run_dir):
    errors, urls = open_page(browser, run_dir / "report.html")
    assert errors == []
    assert urls and all(url.startswith(LOCAL_SCHEMES) for url in urls), urls
    assert any(url.startswith("file:") and url.endswith("report.html") for url in urls)
    count, broken = images_loaded(browser)
    assert count >= 6 and broken == []  # curves, diagnostics, matrix, confused images, filters, activations
    results = json.loads((run_dir / "results.json").read_text())
    headline = browser.find_element("id", "test-accuracy")
    assert headline.text == f"{results['test_top1']:.2%}"
    assert float(headline.get_attribute("data-value")) == results["test_top1"]
    assert browser.find_element("id", "best-epoch").text == str(results["best_epoch"])
    assert browser.title.startswith("digitnet on digits")


def test_conv_demo_steps_with_button_keys_and_clicks(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from cnnkit.viz.conv_demo import conv_demo_html, make_demo

    demo = make_demo()  # the notes' example: 18 steps, stride 2
    errors, urls = open_page(browser, conv_demo_html(tmp_path / "demo.html", demo))
    assert errors == [] and all(url.startswith(LOCAL_SCHEMES) for url in urls), (errors, urls)

    def step_text():
        return browser.find_element(By.ID, "step").text

    def window_cells():
        cells = browser.find_elements(By.CSS_SELECTOR, "#x0 td.win")
        return {(int(c.get_attribute("data-r")), int(c.get_attribute("data-c"))) for c in cells}

    assert step_text().startswith("step 1 of 18: out[0, 0, 0]")
    assert window_cells() == {(r, c) for r in range(3) for c in range(3)}
    browser.find_element(By.ID, "next").click()
    assert step_text().startswith("step 2 of 18: out[0, 1, 0]")
    assert window_cells() == {(r, c) for r in range(3) for c in range(2, 5)}  # moved by the stride
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_RIGHT)
    assert step_text().startswith("step 3 of 18")
    body.send_keys(Keys.ARROW_LEFT)
    assert step_text().startswith("step 2 of 18")
    # a click on out[1, 2, 1] (filter 1, row 1, column 2) shows its window: rows 2-4, columns 4-6
    browser.find_element(By.CSS_SELECTOR, "#out1 tr:nth-child(2) td:nth-child(3)").click()
    index = 9 + 1 * 3 + 2
    assert step_text().startswith(f"step {index + 1} of 18: out[1, 2, 1]")
    assert window_cells() == {(r, c) for r in range(2, 5) for c in range(4, 7)}
    assert browser.find_element(By.ID, "eq").text == demo.equation(index)
    # the products: one expandable block per channel, 9 products each, adding up to the value
    products = browser.find_elements(By.CSS_SELECTOR, "#products details")
    assert len(products) == 3
    assert browser.find_element(By.ID, "total").text.endswith(f"= {int(demo.step(index)['value'])}")
    assert browser.execute_script("return document.querySelectorAll('#products td').length") == 27


def test_misfit_page_in_chromium(browser, tmp_path):
    from cnnkit.viz.conv_demo import misfit_html

    errors, urls = open_page(browser, misfit_html(tmp_path / "misfit.html", 7, 3, 3, 0))
    assert errors == [] and all(url.startswith(LOCAL_SCHEMES) for url in urls)
    assert "2.33 is not a whole number" in browser.find_element("tag name", "body").text
