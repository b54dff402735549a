"""The real App in headless Chromium, driven the way a curator works.

Open the demo dataset, select a photo and use the App's own "sort by
similarity" (its first tiles must be the photo's edited copies); open the
lookalike panel (tables and plots render); run "Flag outliers" from the panel
(the grid must show the planted unique photos); a form that refuses and a run that
fails leave the panel drawn (issue #27: the App had replaced it with "Uncaught Operator
Error"; the in-process half is tests/test_panel_refusals.py). A screenshot of each step goes
to the test's output folder, or to $LOOKALIKE_SCREENSHOTS_DIR (``make
screenshots`` refreshes the README's pictures that way).

Needs Debian's ``chromium`` (``make test`` installs it when run as root) and
the ``playwright`` package (its own browser download is never used).
"""

import importlib.util
import os
import time

import pytest
from fiftyone import ViewField as F

import lookalike.curation as lc

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
UNIQUE = {"coffee", "hubble_deep_field", "microaneurysms", "rocket"}


def _require_browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: browser tests skipped (`make test` installs Debian's "
                    "chromium when run as root; or: apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed (pip install -e '.[test]'): browser tests "
                    "skipped")


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    path = os.environ.get("LOOKALIKE_SCREENSHOTS_DIR") or str(tmp_path_factory.mktemp("shots"))
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser_demo(tmp_path_factory, copies_encoder):
    """The demo dataset with the photos embedded, indexed and calibrated."""
    _require_browser()
    import fiftyone as fo

    import lookalike.curation as lc
    import lookalike.similarity as ls
    from lookalike.demo.dataset import build_demo_dataset
    from lookalike.embeddings.compute import compute_embeddings

    name = "test-browser-demo"
    ds = build_demo_dataset(name, data_dir=str(tmp_path_factory.mktemp("demo")), max_digits=20)
    photos = ds.match(F("source") == "photo")
    compute_embeddings(photos, copies_encoder, "emb")
    ls.build_index(ds, "emb", "emb_sim")
    lc.calibrate_threshold(photos, "emb_sim")
    yield ds
    fo.delete_dataset(name)


@pytest.fixture(scope="module")
def page(app_server, browser_demo):
    import requests
    from playwright.sync_api import sync_playwright

    # Warm the server up: the first page load after a cold start can hang.
    requests.post(f"{app_server}/operators", json={"dataset_name": browser_demo.name},
                  timeout=120)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(f"{app_server}/datasets/{browser_demo.name}")
        try:
            page.wait_for_selector('[title^="Click to select sample"]', state="attached",
                                   timeout=60_000)
        except Exception:  # noqa: BLE001 - cold-start quirk: the grid may never render
            pass
        # The first page of a cold server also misses the App's own similarity
        # results (they never reach the grid): work on a second load, as a user
        # who reloads would.
        page.reload()
        page.wait_for_selector('[title^="Click to select sample"]', state="attached")
        _dismiss_popovers(page)
        yield page
        browser.close()


def _dismiss_popovers(page):
    time.sleep(1)
    for text in ("Dismiss", "Disable"):
        button = page.get_by_text(text, exact=True)
        if button.count():
            button.first.click()
    page.keyboard.press("Escape")


def _target_the_whole_dataset(page):
    """Picks "Entire dataset" where the form offers a choice of target view.

    The form re-renders while it resolves, so the choice may be replaced under
    the pointer: try a few times.
    """
    choice = page.get_by_text("Entire dataset", exact=True)
    for _ in range(3):
        try:
            choice.wait_for(timeout=3000)
        except Exception:  # noqa: BLE001 - no choice offered: the view is the dataset
            return
        try:
            choice.click(timeout=5000)
            return
        except Exception:  # noqa: BLE001 - re-rendered meanwhile: look again
            time.sleep(1)


def _clear_view(page):
    page.locator('[data-cy="btn-clear-view-bar"]').click(force=True)
    time.sleep(2)  # let the App register the dataset view before a form reads it


def _tile_labels(page):
    return page.eval_on_selector_all('[data-cy="tag-ground_truth"]',
                                     "els => els.map(e => e.getAttribute('title'))")


def _tile_badges(page, position):
    """The titles of the badges (tags, labels, fields) drawn on the grid's tile ``position``."""
    return page.locator('[data-cy="looker"]').nth(position).evaluate(
        "el => Array.from(el.querySelectorAll('[data-cy^=\"tag-\"]'))"
        ".map(e => e.getAttribute('title') || e.textContent)")


def _overflow(panel):
    """How far (px) the panel's widest paragraph or table reaches past the panel's visible
    edge (the box of the nearest ancestor that clips or scrolls)."""
    return panel.evaluate("""el => {
        let box = el;
        while (box.parentElement && getComputedStyle(box).overflowX === 'visible')
            box = box.parentElement;
        const edge = Math.min(box.getBoundingClientRect().right, window.innerWidth);
        const parts = Array.from(el.querySelectorAll('p, table'));
        return Math.max(0, ...parts.map(p => p.getBoundingClientRect().right - edge));
    }""")


def _wait_for(condition, timeout=60, what="the App", page=None, shots=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    if page is not None and shots:  # what the App showed instead
        page.screenshot(path=os.path.join(shots, "timed-out.png"))
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _type_until_it_stays(field, value, timeout=240):
    """Types ``value`` into a form field that re-renders while the form resolves, until it
    keeps it. No click: under load a re-render can sit over the field and a click then waits
    on it for a minute (CI, stop 36); focus and fill need no pointer."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            field.focus(timeout=30_000)
            field.fill(value, timeout=30_000)
            field.press("Tab", timeout=30_000)
            time.sleep(2)
            seen = field.input_value(timeout=30_000)
            if seen == value:
                return
        except PlaywrightTimeoutError as e:
            seen = f"no answer: {str(e).splitlines()[0]}"
    raise AssertionError(f"timed out after {timeout} s: the form's field would not keep "
                         f"{value!r} (last: {seen!r})")


def _select_and_search(page, label):
    """Selects the first tile labelled ``label`` and runs the App's "sort by similarity"."""
    labels = _wait_for(lambda: _tile_labels(page), what="the grid's tiles")
    index = labels.index(label)
    page.locator('[data-cy="looker"]').nth(index).hover()
    page.locator('[title^="Click to select sample"]').nth(index).evaluate("el => el.click()")
    page.eval_on_selector('[data-cy="action-sort-by-similarity"]', "el => el.click()")
    search = '[data-cy="button-Search by similarity to the selected images"]'
    page.wait_for_selector(search, state="attached")
    page.eval_on_selector(search, "el => el.click()")
    return index


def test_the_apps_sort_by_similarity_shows_the_edited_copies_first(page, browser_demo, shots):
    photos = browser_demo.match(F("source") == "photo")
    copies = len(photos.match(F("gt_group") == "brick"))
    label = "ground_truth: brick"

    def most_similar_first():
        # All of the first `copies` tiles drawn (a grid still drawing shows fewer), all bricks.
        first = _tile_labels(page)[:copies]
        return first if len(first) == copies and set(first) == {label} else None

    first = None
    for attempt in range(3):
        # The brick original: its group's first tile, not the grid's first tile.
        assert _select_and_search(page, label) > 0
        if attempt == 0:
            page.screenshot(path=os.path.join(shots, "1-select-a-photo.png"))
        try:
            first = _wait_for(most_similar_first, timeout=20,
                              what="the grid to show the most similar photos first")
            break
        except AssertionError:
            # Seen in 1.22: the results of the search that opens the App's
            # "Similarity Search" panel may never reach the grid; once the
            # panel is open (it stays open across reloads) they do.
            page.screenshot(path=os.path.join(shots, f"retry-{attempt}.png"))
            if attempt == 2:
                raise
            page.reload()
            page.wait_for_selector('[title^="Click to select sample"]', state="attached")
            _dismiss_popovers(page)
    time.sleep(3)  # let the thumbnails draw, for the screenshot
    page.screenshot(path=os.path.join(shots, "2-sort-by-similarity.png"))
    assert first == [label] * copies


def test_the_panel_renders_its_tables_and_plots(page, shots):
    page.keyboard.press("Escape")
    page.eval_on_selector('[title="New panel"]', "el => el.click()")
    page.eval_on_selector('[data-cy="new-panel-option-lookalike_panel"]', "el => el.click()")
    panel = page.locator('[data-cy="panel-content-lookalike_panel"]')
    panel.get_by_text("Similarity indexes").wait_for()
    text = _wait_for(lambda: (lambda t: t if "emb_sim" in t else None)(panel.inner_text()),
                     what="the panel's index table", page=page, shots=shots)
    assert "Near-duplicate groups" in text and "Encoders" in text and "copies" in text
    # Formatted lines show their text, not the bare state value they format.
    assert "Next: " in text and "press the backtick key" in text, text[:600]
    assert "emb_sim (field emb, encoder copies, exact engine" in text, text[:1500]
    _wait_for(lambda: panel.locator(".js-plotly-plot").count() >= 1,
              what="the nearest-neighbour histogram")
    page.screenshot(path=os.path.join(shots, "3-panel.png"))
    # Half the window wide, every paragraph and table fits: none runs off the panel's edge.
    assert _overflow(panel) <= 1, f"the panel's content runs {_overflow(panel)} px off its edge"
    # Its buttons open our operators' forms, with defaults read from the dataset.
    for button, title, shot in (("Train", "Train an encoder", "3a-train-form.png"),
                                ("Embed", "Compute embeddings", "3b-embed-form.png"),
                                ("Calibrate", "Calibrate thresholds", "3c-calibrate-form.png")):
        panel.get_by_role("button", name=button, exact=True).click()
        page.get_by_text(title, exact=True).first.wait_for()
        time.sleep(1)
        page.screenshot(path=os.path.join(shots, shot))
        assert not page.get_by_text("Background compute is not yet configured").count()
        page.get_by_role("button", name="Cancel").click()
        page.get_by_text(title, exact=True).first.wait_for(state="hidden")


def test_flag_outliers_from_the_panel_shows_the_unique_photos(page, browser_demo, shots):
    _clear_view(page)
    panel = page.locator('[data-cy="panel-content-lookalike_panel"]')
    panel.get_by_role("button", name="Outliers").click()
    execute = page.get_by_role("button", name="Execute")
    execute.wait_for()
    _target_the_whole_dataset(page)
    page.screenshot(path=os.path.join(shots, "4-flag-outliers-form.png"))
    execute.click()
    flagged = _wait_for(lambda: len(browser_demo.match_tags("no_match")) or None,
                        what="flag_outliers to finish", page=page, shots=shots)
    close = page.get_by_role("button", name="Close")
    close.wait_for()
    page.screenshot(path=os.path.join(shots, "5-flag-outliers-done.png"))
    close.click()

    page.eval_on_selector('[data-cy="panel-tab-samples"]', "el => el.click()")

    def grid_shows_outliers():
        labels = _tile_labels(page)
        return labels if labels and len(labels) == flagged else None

    labels = _wait_for(grid_shows_outliers, what="the grid to show the outliers", page=page,
                       shots=shots)
    time.sleep(3)  # let the thumbnails draw, for the screenshot
    page.screenshot(path=os.path.join(shots, "6-outliers.png"))
    # Only photos without a copy ("isolated": this small encoder may miss some of the 4).
    assert labels and set(labels) <= {f"ground_truth: {u}" for u in UNIQUE}, labels


def test_find_duplicates_from_the_panel_groups_the_planted_copies(page, browser_demo, shots):
    _clear_view(page)
    page.eval_on_selector('[data-cy="panel-tab-lookalike_panel"]', "el => el.click()")
    panel = page.locator('[data-cy="panel-content-lookalike_panel"]')
    panel.get_by_role("button", name="Duplicates", exact=True).click()
    execute = page.get_by_role("button", name="Execute")
    execute.wait_for()
    _target_the_whole_dataset(page)
    execute.click()
    close = page.get_by_role("button", name="Close")
    close.wait_for()
    close.click()
    browser_demo.reload()  # the App server added the fields
    groups = browser_demo.count_values("dup_group")
    groups.pop(None, None)
    assert len(groups) >= 15
    # The panel lists the groups, named by the index that found them; the grid shows them
    # group by group, each opening on its kept image, tagged 'kept'.
    _wait_for(lambda: "Widest distance" in panel.inner_text(), what="the groups table",
              page=page, shots=shots)
    assert "Near-duplicate groups (by index 'emb_sim', " in panel.inner_text()
    page.screenshot(path=os.path.join(shots, "7-duplicate-groups-panel.png"))
    page.eval_on_selector('[data-cy="panel-tab-samples"]', "el => el.click()")
    grouped = sum(groups.values())
    kept = browser_demo.match((F("dup_group") == 1) & (F("dup_kept") == True)).first()  # noqa: E712
    first_label = f"ground_truth: {kept.ground_truth.label}"
    assert "kept" in kept.tags and "duplicate" not in kept.tags

    def grid_shows_groups():
        counts = page.locator('[data-cy="entry-counts"]').inner_text()
        labels = _tile_labels(page)
        return labels and labels[0] == first_label and f"{grouped} samples" in counts

    _wait_for(grid_shows_groups, what="the grid to show the duplicate groups", page=page,
              shots=shots)
    # The first tile's badges: the 'kept' tag and its distance to itself.
    badges = _wait_for(lambda: (lambda b: b if any("kept" in t for t in b) else None)(
        _tile_badges(page, 0)), what="the kept badge on the first tile", page=page, shots=shots)
    assert not any("duplicate" in t for t in badges), badges
    time.sleep(3)
    page.screenshot(path=os.path.join(shots, "8-duplicate-groups-grid.png"))

    # Select a member verified by local features: the panel lists its group, the kept
    # image first, each with its distance and inliers to the kept one and why it is there.
    labels = _tile_labels(page)
    ids = lc.duplicates_view(browser_demo).values("id")
    verified = browser_demo.select(ids).match(F("dup_inliers") >= 12)
    assert len(verified), "no member was verified by local features"
    verified_ids = set(verified.values("id"))
    # The first one in the grid's order, among the tiles drawn.
    position = next(n for n, i in enumerate(ids[:len(labels)]) if i in verified_ids)
    member = browser_demo[ids[position]]
    page.locator('[data-cy="looker"]').nth(position).hover()
    page.locator('[title^="Click to select sample"]').nth(position).evaluate("el => el.click()")
    page.eval_on_selector('[data-cy="panel-tab-lookalike_panel"]', "el => el.click()")
    text = _wait_for(lambda: (lambda t: t if "Inliers with the kept" in t else None)(
        panel.inner_text()), what="the selected sample's group in the panel", page=page,
        shots=shots)
    assert "Duplicate group of the selected sample" in text and "kept" in text
    assert str(member.dup_inliers) in text and f"{member.dup_distance:.4f}"[:5] in text
    page.screenshot(path=os.path.join(shots, "9-group-members-with-inliers.png"))


def test_find_similar_by_a_missing_file_says_why_in_one_line(page, shots):
    """The newcomer's last step: a query file that is not there is refused before Execute."""
    page.keyboard.press("Escape")
    page.eval_on_selector('[data-cy="panel-tab-samples"]', "el => el.click()")
    _clear_view(page)
    # The operator browser: the way to any operator by its name.
    choice = page.get_by_text("Lookalike: find similar images")
    for attempt in range(3):
        page.keyboard.press("Escape")
        page.mouse.click(5, 300)  # the focus out of any input (the sidebar's edge)
        # The App's shortcut for its operator browser (the grid's action row, where its
        # button lives, may be folded away when panels share the space).
        page.keyboard.press("`")
        time.sleep(1)
        page.keyboard.type("find similar")
        try:
            choice.first.wait_for(timeout=10_000)
            break
        except Exception:  # noqa: BLE001 - typed before the browser took the focus: again
            page.screenshot(path=os.path.join(shots, f"retry-browse-{attempt}.png"))
            if attempt == 2:
                raise
    choice.first.click()
    page.get_by_text("Find similar images", exact=True).first.wait_for()
    query = page.get_by_text("Query image file (optional)").first.locator(
        "xpath=following::input[1]")
    query.wait_for()
    query.fill("/no/such/photo.jpg")
    query.press("Tab")
    reason = "/no/such/photo.jpg: file not found"
    _wait_for(lambda: page.get_by_text(reason).count(), what="the form to say why",
              page=page, shots=shots)
    page.screenshot(path=os.path.join(shots, "10-find-similar-missing-file.png"))
    assert "Traceback" not in page.inner_text("body")
    assert page.get_by_role("button", name="Execute").is_disabled()
    page.get_by_role("button", name="Cancel").click()


def _open_the_panel(page):
    """The lookalike panel, opened (the grid's + → Lookalike) or brought to the front."""
    page.keyboard.press("Escape")
    tab = page.locator('[data-cy="panel-tab-lookalike_panel"]')
    if tab.count():
        tab.first.evaluate("el => el.click()")
    else:
        page.eval_on_selector('[title="New panel"]', "el => el.click()")
        page.eval_on_selector('[data-cy="new-panel-option-lookalike_panel"]', "el => el.click()")
    panel = page.locator('[data-cy="panel-content-lookalike_panel"]')
    panel.get_by_text("Similarity indexes").wait_for()
    return panel


def _the_panel_is_drawn(page, panel):
    """The panel with its tables, not the App's "Uncaught Operator Error" in its place."""
    _wait_for(lambda: "emb_sim" in panel.inner_text(), what="the panel's index table")
    assert "Uncaught Operator Error" not in page.inner_text("body")
    assert panel.get_by_text("Near-duplicate groups").count()
    return panel.inner_text()


def test_a_refused_leak_search_says_why_in_its_form_and_the_panel_stays(page, shots):
    """The demo has no train / val / test tags: the form says so and Execute is disabled."""
    _clear_view(page)
    panel = _open_the_panel(page)
    panel.get_by_role("button", name="Leaks", exact=True).click()
    form = page.get_by_role("dialog")
    form.get_by_text("No leaks to look for").wait_for()
    text = form.inner_text()
    assert "Find leaks across splits" in text
    assert "holds no split of the split tags train, val, test" in text
    assert "Traceback" not in text
    assert page.get_by_role("button", name="Execute").is_disabled()
    # (The App flags the filled fields "Required property" while it first resolves.)
    _wait_for(lambda: not form.get_by_text("Required property").count(),
              what="the form to settle")
    page.screenshot(path=os.path.join(shots, "11-find-leaks-without-splits.png"))
    page.get_by_role("button", name="Cancel").click()
    form.wait_for(state="hidden")
    _the_panel_is_drawn(page, panel)


def test_an_operator_that_fails_leaves_the_panel_drawn_with_the_reason(page, browser_demo, shots):
    """A run that fails in execute (a brain key the index form cannot use): the App shows
    its error, and the panel, still drawn, says which button failed and why in one line."""
    panel = _open_the_panel(page)
    panel.get_by_role("button", name="Index", exact=True).click()
    form = page.get_by_role("dialog")
    key = form.get_by_text("Brain key", exact=True).locator("xpath=following::input[1]")
    key.wait_for()
    # The form re-renders while it resolves: type until the key stays (a run with the
    # default key would rebuild the demo's index).
    _type_until_it_stays(key, "not a key")
    page.get_by_role("button", name="Execute").click()
    page.get_by_text("Error occurred during operator execution").wait_for()
    page.screenshot(path=os.path.join(shots, "12-operator-failed.png"))
    page.get_by_role("button", name="Close").click()
    reason = ("brain key 'not a key' is not usable: use letters, digits and underscores, "
              "not starting with a digit")
    text = _wait_for(lambda: (lambda t: t if "Index failed" in t else None)(panel.inner_text()),
                     what="the panel to say the run failed", page=page, shots=shots)
    assert reason in text and "Traceback" not in text
    _the_panel_is_drawn(page, panel)
    page.screenshot(path=os.path.join(shots, "13-panel-after-a-failed-run.png"))
    browser_demo.reload()
    assert browser_demo.list_brain_runs() == ["emb_sim"]
    # Its buttons still work: the next form opens, and the failure is forgotten.
    panel.get_by_role("button", name="Calibrate", exact=True).click()
    page.get_by_text("Calibrate thresholds", exact=True).first.wait_for()
    page.get_by_role("button", name="Cancel").click()
    _wait_for(lambda: "Index failed" not in panel.inner_text(), what="the failure to clear")


def _panel_button(page, panel, name):
    """Clicks the panel's button ``name`` and returns the form it opens."""
    panel.get_by_role("button", name=name, exact=True).click()
    form = page.get_by_role("dialog")
    form.wait_for()
    return form


def _refreshed(page, panel, condition, what, shots):
    """The panel's text once ``condition(text)`` holds, pressing Refresh as a curator would."""
    def ready():
        # A JavaScript click: the panel's refresh may change the App's URL, and Playwright's
        # own click then waits on that navigation (a minute once, locally: 2026-12-07).
        panel.get_by_role("button", name="Refresh", exact=True).evaluate("el => el.click()")
        time.sleep(1)
        text = panel.inner_text()
        return text if condition(text) else None

    return _wait_for(ready, what=what, page=page, shots=shots)


def _close_the_result(page):
    """Closes the operator's result dialog, once the App shows it (or finds none)."""
    dialog = page.get_by_role("dialog")
    close = dialog.get_by_role("button", name="Close", exact=True)

    def settled():  # the form gone, or the result dialog with its Close button drawn
        return "gone" if not dialog.count() else ("close" if close.count() else None)

    if _wait_for(settled, what="the result dialog", page=page) == "close":
        close.first.click()
        dialog.wait_for(state="hidden")


def _first_page(page):
    """The labels of the grid's first tiles on the whole dataset (its order, as a user sees it)."""
    _clear_view(page)
    page.eval_on_selector('[data-cy="panel-tab-samples"]', "el => el.click()")
    return _wait_for(lambda: (lambda t: t if len(t) >= 12 else None)(_tile_labels(page)),
                     what="the grid's first page")[:12]


def test_delete_then_undelete_from_the_panel_gives_back_the_same_grid(page, browser_demo, shots):
    """#27 cases 2-4: Execute stays disabled until the deletion is confirmed; after the
    delete the panel says what is left and that calibrations are stale; Undelete puts every
    sample back in its place: the same first page, the same order, the same calibration."""
    photos = browser_demo.match(F("source") == "photo")
    if not len(lc.duplicates_view(browser_demo).match_tags("duplicate")):
        lc.find_duplicates(browser_demo, "emb_sim")  # this test alone (-k): groups first
    order, grid = browser_demo.values("id"), _first_page(page)
    calibration = lc.get_calibration(browser_demo, "emb_sim")  # the fixture's, of `photos`
    count = lc.delete_duplicates(browser_demo, dry_run=True).count
    assert count > 0

    panel = _open_the_panel(page)
    form = _panel_button(page, panel, "Delete duplicates")
    confirm = form.get_by_text(f"Yes, delete {count} samples", exact=True)
    confirm.wait_for()
    assert f"This deletes {count} samples" in form.inner_text()
    assert "Calibrations made with them become stale" in form.inner_text()
    execute = page.get_by_role("button", name="Execute")
    _wait_for(execute.is_disabled, what="Execute disabled before the confirmation")
    page.screenshot(path=os.path.join(shots, "14-delete-form-unconfirmed.png"))
    confirm.click()
    _wait_for(execute.is_enabled, what="Execute enabled once ticked", page=page, shots=shots)
    execute.click()
    _wait_for(lambda: len(browser_demo) == len(order) - count, what="the delete", page=page,
              shots=shots)
    _close_the_result(page)

    text = _refreshed(page, panel, lambda t: "deleted since" in t,
                      "the panel to say what the delete left", shots)
    assert f"{count} of them deleted since: 0 groups left" in text, text[:2000]
    assert "STALE, recalibrate" in text and "Undelete restores" in text
    page.screenshot(path=os.path.join(shots, "15-panel-after-delete.png"))
    # Beside FiftyOne's own Similarity Search panel too, nothing runs off the panel's edge.
    assert _overflow(panel) <= 1, f"the panel's content runs {_overflow(panel)} px off its edge"

    form = _panel_button(page, panel, "Undelete")
    form.get_by_text(f"{count} samples (delete_duplicates)").first.wait_for()
    page.get_by_role("button", name="Execute").click()
    _wait_for(lambda: len(browser_demo) == len(order), what="the undelete", page=page,
              shots=shots)
    _close_the_result(page)
    text = _refreshed(page, panel, lambda t: "deleted since" not in t and "STALE" not in t,
                      "the panel to forget the delete", shots)
    assert browser_demo.values("id") == order
    assert _first_page(page) == grid
    again = lc.calibrate_threshold(photos, "emb_sim")
    assert (again.threshold, again.duplicate_threshold) == (
        calibration.threshold, calibration.duplicate_threshold)


def test_showing_an_index_does_not_change_what_find_similar_offers(page, browser_demo, shots,
                                                                   copies_encoder):
    """#27 case 7: *Show* on an index over the digits is only looking; find similar on a
    selected photo still offers the photos' index first (the digits' one does not hold it)."""
    import lookalike.similarity as ls
    from lookalike.embeddings.compute import compute_embeddings

    digits = browser_demo.match(F("source") == "digit")
    compute_embeddings(digits, copies_encoder, "emb_digits")
    ls.build_index(digits, "emb_digits", "zz_digits_sim")
    try:
        _clear_view(page)
        page.eval_on_selector('[data-cy="panel-tab-samples"]', "el => el.click()")
        labels = _wait_for(lambda: _tile_labels(page), what="the grid's tiles")
        photo = next(n for n, label in enumerate(labels) if "ground_truth: " in label
                     and not label.split(": ")[1].isdigit())
        page.locator('[data-cy="looker"]').nth(photo).hover()
        page.locator('[title^="Click to select sample"]').nth(photo).evaluate("el => el.click()")
        panel = _open_the_panel(page)
        _refreshed(page, panel, lambda t: "zz_digits_sim" in t, "the second index", shots)
        row = panel.get_by_role("row").filter(has_text="zz_digits_sim")
        row.get_by_role("button").last.click()
        _wait_for(lambda: "zz_digits_sim (field emb_digits" in panel.inner_text(),
                  what="the panel to show the digits' index", page=page, shots=shots)
        form = _panel_button(page, panel, "Find similar")
        form.get_by_text("Similarity index").first.wait_for()
        time.sleep(2)
        page.screenshot(path=os.path.join(shots, "17-find-similar-defaults.png"))
        # The dropdown shows its choice: the photos' index, not the one just looked at.
        text = form.inner_text()
        assert "emb_sim" in text and "zz_digits_sim" not in text, text
        assert "does not hold" not in text
        page.get_by_role("button", name="Cancel").click()
    finally:
        browser_demo.delete_brain_run("zz_digits_sim")


def test_match_a_folder_from_the_panel_names_copies_and_new_images(page, browser_demo, shots,
                                                                 tmp_path):
    """The newcomer's walk ends by matching a folder of new images: the result table says
    which are copies of samples (duplicate) and which are new; an unreadable file is named."""
    import shutil

    import sklearn.datasets
    from PIL import Image

    originals = browser_demo.match((F("source") == "photo") & (F("gt_edit") == "original"))
    copied = originals.first()
    with Image.open(copied.filepath) as img:
        img.convert("RGB").resize((img.width * 3 // 4, img.height * 3 // 4)).save(
            tmp_path / "new_copy.jpg", quality=85)
    shutil.copyfile(os.path.join(os.path.dirname(sklearn.datasets.__file__), "images",
                                 "china.jpg"), tmp_path / "unseen_china.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")

    _clear_view(page)
    panel = _open_the_panel(page)
    form = _panel_button(page, panel, "Match new images")
    folder = form.get_by_text("Folder of new images").first.locator("xpath=following::input[1]")
    folder.wait_for()
    _type_until_it_stays(folder, str(tmp_path))
    _target_the_whole_dataset(page)
    page.get_by_role("button", name="Execute").click()
    result = page.get_by_role("dialog")
    _wait_for(lambda: "unseen_china.jpg" in result.inner_text(), timeout=120,
              what="the folder's result table", page=page, shots=shots)
    time.sleep(1)
    page.screenshot(path=os.path.join(shots, "18-match-a-folder.png"))
    text = result.inner_text()
    assert "Traceback" not in text
    table = " ".join(text.split())
    assert "new_copy.jpg duplicate" in table, table[:2000]
    assert "unseen_china.jpg new" in table, table[:2000]
    assert "broken.jpg unreadable: " in table and "1 unreadable file skipped" in table
    _close_the_result(page)
