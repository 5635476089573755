"""The explorer page in a real browser (headless Chromium driven by selenium), on the training step of a 12-layer,
128-wide GPT with an AdamW update: it opens collapsed without console errors and fetches nothing, a click expands a
block, search jumps to and expands a match, a forward node lights up the backward nodes that differentiate it and
the saved activations they read, and the pass stepper marks what a pass removed. Open and expand times (the page's
own performance timing) are printed, never asserted. Screenshots go to $GRAPHGPT_SCREENSHOTS (else a temporary
folder), named in the output. Skipped where selenium, Chromium or its driver is missing."""

import os
import re
import shutil
import time

import numpy as np
import pytest

import graphgpt
from graphgpt.nn import functional as F

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(BROWSER is None or DRIVER is None,
                                reason="no headless Chromium here (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The 12-layer, 128-wide training step's page, written once."""
    graphgpt.manual_seed(0)
    model = graphgpt.nn.GPT(65, 128, 12, 4, max_seq_len=8)
    tokens = np.random.default_rng(0).integers(0, 65, size=(1, 8))
    step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, optimizer=graphgpt.optim.AdamW(lr=1e-3),
                            shards=1)
    path = step.explore(str(tmp_path_factory.mktemp("explorer") / "step.html"))
    print(f"\nexplorer page: {path}, {os.path.getsize(path) / 2**20:.2f} MiB, {len(step.graph.nodes)} nodes")
    return path


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = os.environ.get("GRAPHGPT_SCREENSHOTS") or str(tmp_path_factory.mktemp("screenshots"))
    os.makedirs(folder, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1600,1000"):
        options.add_argument(argument)
    options.binary_location = BROWSER
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def opened(browser, page):
    """The page freshly opened (every test starts collapsed), with the browser's log emptied of older entries."""
    browser.get_log("browser")
    browser.get("file://" + page)
    deadline = time.time() + 30
    while not browser.execute_script("return document.body.getAttribute('data-ready')"):
        assert time.time() < deadline, "the explorer did not finish opening within 30 s"
        time.sleep(0.02)
    return browser


def errors(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def box_key(driver, path):
    return "b" + str(driver.execute_script(
        "return explorer.graph.boxes.find((box) => box.path === arguments[0]).index", path))


def click(driver, key):
    element = driver.find_element(By.CSS_SELECTOR, f'g[data-key="{key}"] rect')
    ActionChains(driver).move_to_element(element).click().perform()


def drawn(driver, selector):
    return len(driver.find_elements(By.CSS_SELECTOR, selector))


def wait_for_timing(driver, count):
    deadline = time.time() + 10
    while len(driver.execute_script("return window.explorerTiming.expandMs")) < count:
        assert time.time() < deadline
        time.sleep(0.02)
    return driver.execute_script("return window.explorerTiming.expandMs")


def test_opens_collapsed_to_top_level_modules_without_errors_or_fetches(opened, screenshots):
    top = opened.execute_script("return explorer.graph.root.childBoxes.map((box) => box.name)")
    assert {"token_embedding", "blocks.0", "blocks.11", "ln_f", "lm_head", "loss", "optimizer", "blocks.0 backward",
            "blocks.11 backward"} <= set(top)
    assert drawn(opened, "g.box.closed") == len(top) and drawn(opened, "g.box.open") == 0
    stats = opened.find_element(By.CSS_SELECTOR, f'g[data-key="{box_key(opened, "blocks.3")}"] .stats').text
    assert "nodes" in stats and "FLOP" in stats and "KiB" in stats
    assert opened.execute_script("return performance.getEntriesByType('resource').length") == 0
    assert errors(opened) == []
    print(f"\nopen: {opened.execute_script('return window.explorerTiming.openMs'):.0f} ms (navigation to painted)")
    opened.save_screenshot(os.path.join(screenshots, "collapsed.png"))
    print("screenshot:", os.path.join(screenshots, "collapsed.png"))


def test_a_click_expands_one_level_and_keeps_the_view(opened, screenshots):
    key = box_key(opened, "blocks.0")
    before = opened.find_element(By.CSS_SELECTOR, f'g[data-key="{key}"] rect').location
    click(opened, key)
    print(f"\nexpand blocks.0: {wait_for_timing(opened, 1)[-1]:.0f} ms (click to painted)")
    assert drawn(opened, f'g.box.open[data-key="{key}"]') == 1
    children = opened.execute_script(
        "return explorer.graph.boxes.find((box) => box.path === 'blocks.0').childBoxes.map((box) => box.name)")
    assert {"ln1", "attention", "ln2", "mlp"} <= set(children)
    for name in children:
        assert drawn(opened, f'g.box.closed[data-key="{box_key(opened, "blocks.0 / " + name)}"]') == 1
    after = opened.find_element(By.CSS_SELECTOR, f'g[data-key="{key}"] rect').location
    assert abs(after["x"] - before["x"]) < 2 and abs(after["y"] - before["y"]) < 2
    opened.save_screenshot(os.path.join(screenshots, "expanded.png"))
    print("screenshot:", os.path.join(screenshots, "expanded.png"))
    opened.find_element(By.ID, "expand-all").click()
    print(f"expand all: {wait_for_timing(opened, 2)[-1]:.0f} ms")
    assert drawn(opened, "g.leaf") == opened.execute_script("return explorer.graph.values.length")
    # Each name measured in the font the page draws it in (the drawing's zoom-out to fit, where Chromium enlarges
    # tiny text, would blur a check of the rendered boxes) against the box the layout made for it.
    overrun = opened.execute_script("""
        const canvas = document.createElement('canvas').getContext('2d');
        return [...document.querySelectorAll('#graph g.leaf, #graph g.box.closed')].filter((g) => {
          const rect = g.querySelector('rect'), name = g.querySelector('text.name');
          canvas.font = getComputedStyle(name).font;
          const right = name.x.baseVal[0].value + canvas.measureText(name.textContent).width;
          return right > rect.x.baseVal.value + rect.width.baseVal.value;
        }).map((g) => g.querySelector('text.name').textContent);""")
    assert overrun == []  # every name inside its box: the joined optimizer state's long names among them
    opened.find_element(By.ID, "collapse-all").click()
    assert drawn(opened, "g.leaf") == opened.execute_script(
        "return explorer.graph.values.filter((value) => value.box === explorer.graph.root).length")
    assert errors(opened) == []


def test_search_jumps_to_a_match_and_opens_its_boxes(opened):
    search = opened.find_element(By.ID, "search")
    search.send_keys("blocks.7.mlp.linear1")
    assert "matches" in opened.find_element(By.ID, "search-results").text
    search.send_keys(Keys.ENTER)
    selected = opened.find_element(By.CSS_SELECTOR, "g.leaf.selected")
    assert opened.execute_script("return explorer.selectedItem().module") == "blocks.7.mlp.linear1"
    assert opened.execute_script("return explorer.selectedItem().chain.every((box) => box.expanded)")
    assert selected.is_displayed()
    details = opened.find_element(By.ID, "details").text
    assert "blocks.7.mlp.linear1" in details and "source" in details and "planned" in details
    assert errors(opened) == []


def test_a_forward_node_lights_up_its_backward_nodes_and_saved_activations(opened, screenshots):
    forward = opened.execute_script("""
        const value = explorer.graph.values.find((v) => v.op === 'matmul' && v.role === 'forward'
                                                  && v.module === 'blocks.0.attention.q_proj');
        explorer.goTo('v' + value.index);
        return value.index;""")
    expected = opened.execute_script(
        "return (explorer.graph.differentiatedBy.get(arguments[0]) || []).filter((b) => explorer.view.present[b.index])"
        ".map((b) => 'v' + b.index)", forward)
    assert expected
    opened.find_element(By.CSS_SELECTOR, "button[data-reveal]").click()
    lit = {element.get_attribute("data-key") for element in opened.find_elements(By.CSS_SELECTOR, "g.hl-backward")}
    assert lit == set(expected)  # each backward node shown as itself, none other lit
    assert drawn(opened, "g.leaf.hl-saved") >= 1 and drawn(opened, "path.link") == len(expected)
    assert "Saved activations they read" in opened.find_element(By.ID, "details").text
    opened.save_screenshot(os.path.join(screenshots, "forward_selected.png"))
    print("\nscreenshot:", os.path.join(screenshots, "forward_selected.png"))
    click(opened, expected[0])  # and back: the backward node leads to its forward node
    assert {e.get_attribute("data-key") for e in opened.find_elements(By.CSS_SELECTOR, "g.hl-forward")} == {f"v{forward}"}
    assert "Go to the forward node" in opened.find_element(By.ID, "details").text
    assert errors(opened) == []


def test_the_pass_stepper_marks_what_a_pass_removed_on_the_same_layout(opened, screenshots):
    names = opened.execute_script("return explorer.graph.stages.map((stage) => stage.name)")
    step = names.index("eliminate_common_subexpressions")
    key = box_key(opened, "blocks.0")
    click(opened, key)
    position = opened.find_element(By.CSS_SELECTOR, f'g[data-key="{box_key(opened, "blocks.0 / attention")}"] rect').rect
    opened.find_element(By.CSS_SELECTOR, f'#pass-table tr[data-step="{step}"]').click()
    assert "eliminate_common_subexpressions" in opened.find_element(By.ID, "step-name").text
    assert "eliminate_common_subexpressions" in opened.find_element(By.CSS_SELECTOR, "#pass-table tr.current").text
    assert drawn(opened, "g.box.changed") >= 1  # boxes holding merged nodes say how many
    moved = opened.find_element(By.CSS_SELECTOR, f'g[data-key="{box_key(opened, "blocks.0 / attention")}"] rect').rect
    assert moved == position  # one layout for every step: the eye can compare
    click(opened, box_key(opened, "blocks.0 / attention"))
    click(opened, box_key(opened, "blocks.0 / attention / k_proj"))  # its bias add merged with q_proj's
    assert drawn(opened, "g.leaf.removed") >= 1
    opened.save_screenshot(os.path.join(screenshots, "pass_step.png"))
    print("\nscreenshot:", os.path.join(screenshots, "pass_step.png"))
    opened.find_element(By.ID, "step-back").click()  # to fold_constants, which changed nothing here
    assert names[step - 1] == "fold_constants" and drawn(opened, "g.leaf.removed") == 0
    assert errors(opened) == []


def test_a_node_a_generated_kernel_computes_shows_its_source(browser, tmp_path, screenshots):
    """backend="numba": the details of a layer norm say which generated kernel runs it and hold its source."""
    pytest.importorskip("numba", reason="generated kernels need numba (pip install numba)")
    graphgpt.manual_seed(0)
    model = graphgpt.nn.GPT(65, 32, 2, 4, max_seq_len=8)
    tokens = np.random.default_rng(0).integers(0, 65, size=(2, 8))
    step = graphgpt.compile(model, tokens, tokens, loss=F.cross_entropy, shards=1, backend="numba")
    numbered = re.search(r"# ==== kernel (\d+) of \d+: layer_norm,", step.kernels())
    opened = browser
    opened.get("file://" + step.explore(str(tmp_path / "numba.html")))
    deadline = time.time() + 30
    while not opened.execute_script("return document.body.getAttribute('data-ready')"):
        assert time.time() < deadline, "the explorer did not finish opening within 30 s"
        time.sleep(0.02)
    search = opened.find_element(By.ID, "search")
    search.send_keys("layer_norm")
    search.send_keys(Keys.ENTER)
    details = opened.find_element(By.ID, "details")
    assert f"generated kernel {numbered.group(1)} (compiled.kernels())" in details.text
    opened.find_element(By.CSS_SELECTOR, "#details details.kernel summary").click()
    assert "def layer_norm(" in opened.find_element(By.CSS_SELECTOR, "#details details.kernel pre").text
    opened.save_screenshot(os.path.join(screenshots, "kernel_source.png"))
    assert errors(opened) == []
