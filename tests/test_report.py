"""`ittrna report`: statistics per grid cell (mean ± std, Student-t 95 % CI), report.md, plots, and a
self-contained report.html that a real headless browser renders (skipped where none exists)."""

from __future__ import annotations

import base64
import json
import math
import random
import re
import shutil
import statistics
from pathlib import Path

from conftest import import_or_fail, skip_unless_ci

from ittrna.cli import main
from ittrna.experiments.report import pivot, summarize, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _records(seed: int = 0) -> list[dict]:
    """A synthetic sweep: two methods on the SAF curve (sigma 0) and the sigma curve (no faults), 3 chips."""
    rng = random.Random(seed)
    out = []
    pairs = [(0.0, 0.0), (0.1, 0.0), (0.2, 0.0), (0.0, 0.5), (0.0, 1.0)]
    for method, writes in (("none", 1000), ("remap", 900)):
        for rate, sigma in pairs:
            for chip in (1, 2, 3):
                acc = max(0.0, 0.95 - rate * (2 if method == "none" else 0.3) - sigma * 0.2 + rng.uniform(-.02, .02))
                out.append({"key": f"{method}-{rate}-{sigma}-{chip}", "model": "mlp", "dataset": "mnist",
                            "saf_rate": rate, "sigma": sigma, "pattern": "uniform", "method": method,
                            "chip_seed": chip, "software_accuracy": 0.95, "chip_accuracy": acc,
                            "chip_accuracy_before": acc - 0.01 if acc > 0.01 else acc, "writes": writes,
                            "writes_performed": writes, "seconds": 0.5, "method_version": 1,
                            "ittrna_version": "0.1.0", "model_sha256": "s" * 64})
    return out


def _store(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_cell_statistics_mean_std_and_t_interval():
    recs = [r for r in _records() if r["method"] == "none" and r["saf_rate"] == 0.1]
    for r, acc in zip(recs, (0.80, 0.90, 0.85), strict=True):
        r["chip_accuracy"] = acc
    rows, shown = summarize(recs)
    assert len(rows) == 1 and shown == ["model", "dataset", "method"]  # constant columns are not shown
    row = rows[0]
    assert row["chips"] == 3 and math.isclose(row["chip_accuracy_mean"], 0.85)
    assert math.isclose(row["chip_accuracy_std"], 0.05)
    half = 4.302652729911275 * 0.05 / math.sqrt(3)  # t(0.975, 2 dof)
    assert math.isclose(row["ci95_high"] - row["chip_accuracy_mean"], half, rel_tol=1e-9)
    assert math.isclose(row["loss_mean"], 0.95 - 0.85)
    single, _ = summarize(recs[:1])
    assert single[0]["chips"] == 1 and math.isnan(single[0]["ci95_low"]) and single[0]["chip_accuracy_std"] == 0


def test_cells_split_on_every_point_field_but_the_chip_seed():
    recs = _records()
    rows, shown = summarize(recs)
    assert len(rows) == 2 * 5 and all(r["chips"] == 3 for r in rows)
    assert shown == ["model", "dataset", "saf_rate", "sigma", "method"]
    recs[0]["stuck_on_share"] = 0.5  # another chip setting: its own cell, and a shown column
    rows, shown = summarize(recs)
    assert len(rows) == 11 and "stuck_on_share" in shown


def test_pivot_is_one_row_per_setting_and_a_column_per_method():
    recs = _records()
    recs = [r for r in recs if not (r["method"] == "remap" and r["saf_rate"] == 0.2)]  # a cell not yet run
    recs.append({**recs[0], "key": "extra", "method": "aft", "chip_accuracy": 0.97})  # one chip, beats software
    rows, shown = summarize(recs)
    (p,) = pivot(rows, shown, ["none", "remap"])
    assert (p.model, p.dataset, p.settings, p.methods) == ("mlp", "mnist", ["saf_rate", "sigma"],
                                                            ["none", "remap", "aft"])
    assert [v for v, _ in p.rows] == [[0.0, 0.0], [0.0, 0.5], [0.0, 1.0], [0.1, 0.0], [0.2, 0.0]]
    by_setting = {tuple(v): cells for v, cells in p.rows}
    assert by_setting[(0.2, 0.0)][1] is None and by_setting[(0.0, 0.0)][2]["chips"] == 1
    for values, cells in p.rows:  # every cell is the summarize row of that setting and method
        for method, cell in zip(p.methods, cells, strict=True):
            if cell is not None:
                assert cell["method"] == method and [cell[c] for c in p.settings] == values
    assert sum(c is not None for _, cells in p.rows for c in cells) == len(rows)
    assert by_setting[(0.0, 0.0)][2]["loss_mean"] < 0


def test_a_method_setting_goes_into_its_column_label_not_a_row():
    """`make demo`'s report split every chip setting into two rows by `method.epochs` (a setting only
    `remap-fat` has): one row per chip setting, the method's settings in its column label."""
    recs = _records()
    for r in recs:
        if r["method"] == "remap":
            r["method.epochs"] = 1
    rows, shown = summarize(recs)
    assert "method.epochs" in shown
    (p,) = pivot(rows, shown, ["none", "remap"])
    assert p.settings == ["saf_rate", "sigma"] and len(p.rows) == 5
    assert p.methods == ["none", "remap (epochs=1)"]
    assert all(c is not None for _, cells in p.rows for c in cells)
    twice = recs + [{**r, "key": r["key"] + "-e2", "method.epochs": 2} for r in recs if r["method"] == "remap"]
    rows, shown = summarize(twice)
    (p,) = pivot(rows, shown, ["none", "remap"])  # two settings of one method: two columns, still 5 rows
    assert p.methods == ["none", "remap (epochs=1)", "remap (epochs=2)"] and len(p.rows) == 5


def test_pivot_names_a_method_version_only_where_the_store_mixes_several():
    recs = _records()
    for r in recs:
        if r["method"] == "remap":
            r["method_version"] = 2  # another method's version is not a setting: no extra rows
    rows, shown = summarize(recs)
    (p,) = pivot(rows, shown, ["none", "remap"])
    assert p.settings == ["saf_rate", "sigma"] and p.methods == ["none", "remap"] and len(p.rows) == 5
    old = [{**r, "key": r["key"] + "-v1", "method_version": 1, "chip_accuracy": 0.5}
           for r in recs if r["method"] == "remap"]  # the same method at two versions: two columns
    rows, shown = summarize(recs + old)
    (p,) = pivot(rows, shown, ["none", "remap"])
    assert p.methods == ["none", "remap v1", "remap v2"] and len(p.rows) == 5
    for _, cells in p.rows:
        assert cells[1]["method_version"] == 1 and cells[2]["method_version"] == 2
    from ittrna.experiments.report import _series

    curves, shared = _series(rows, "saf_rate", shown)  # the plots' curve labels follow the same rule
    assert set(curves) == {"none", "remap v1", "remap v2"} and shared == "sigma=0"


def test_curve_labels_name_only_what_differs_between_curves():
    from ittrna.experiments.report import _series

    recs = _records()
    rows, shown = summarize(recs)
    curves, shared = _series(rows, "sigma", shown)  # sigma curves only at saf_rate 0: the labels drop it
    assert set(curves) == {"none", "remap"} and shared == "saf_rate=0"
    extra = [{**r, "key": r["key"] + "-x", "saf_rate": 0.1} for r in recs if r["sigma"] == 0.5]
    rows, shown = summarize(recs + extra)  # now also sigma curves at saf_rate 0.1 (sigma 0 and 0.5)
    curves, shared = _series(rows, "sigma", shown)
    assert shared == "" and set(curves) == {f"saf_rate={s}, {m}" for s in ("0", "0.1") for m in ("none", "remap")}
    alone = [r for r in rows if r["method"] == "none" and r["saf_rate"] == 0.0]
    curves, shared = _series(alone, "sigma", shown)  # one curve: the method is still named
    assert list(curves) == ["none"] and shared == "saf_rate=0" and len(curves["none"]) == 3


def test_report_leads_with_loss_by_method(tmp_path):
    recs = [r for r in _records() if not (r["method"] == "remap" and r["chip_seed"] == 3 and r["sigma"] == 1.0)]
    rep = write_report(_store(tmp_path / "sweep", recs))
    md = rep.markdown.read_text()
    head, _ = md.split("## mlp on mnist: every cell")
    assert "## Loss by method" in head and "### mlp on mnist (software 95.00 %)" in head
    assert "| saf_rate | sigma | none | remap |" in head  # none first, then the store's order
    line = next(x for x in head.splitlines() if x.startswith("| 0 | 1 |"))
    remap = next(r for r in rep.rows if r["method"] == "remap" and r["sigma"] == 1.0)
    assert line.split(" | ")[-1] == f"{100 * remap['loss_mean']:.2f} ± {100 * remap['chip_accuracy_std']:.2f} (n=2) |"


def test_report_writes_markdown_csv_and_plots(tmp_path, capsys):
    folder = _store(tmp_path / "sweep", _records())
    code = main(["report", str(folder), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    payload = json.loads(out.strip().splitlines()[-1])
    assert payload["records"] == 30 and len(payload["cells"]) == 10 and payload["html"] is None
    md = (folder / "report.md").read_text()
    assert "| saf_rate | sigma | method | chips |" in md and "95 % CI" in md
    assert md.count("\n| 0") + md.count("\n| 0.1") >= 5
    names = sorted(p.name for p in (folder / "plots").iterdir())
    assert names == ["accuracy_vs_saf_rate.png", "accuracy_vs_sigma.png", "accuracy_vs_writes.png"]
    for p in (folder / "plots").iterdir():
        assert p.read_bytes().startswith(PNG) and p.stat().st_size > 5000
        assert f"(plots/{p.name})" in md
    assert len((folder / "report.csv").read_text().splitlines()) == 11
    assert not (folder / "report.html").exists()


def test_html_is_self_contained(tmp_path):
    folder = _store(tmp_path / "sweep", _records())
    rep = write_report(folder, html=True, title="A <test> report")
    text = rep.html.read_text()
    assert "<title>A &lt;test&gt; report</title>" in text
    assert not re.search(r"""(src|href)=["'](?!data:)""", text)  # nothing loaded from elsewhere
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert text.count("<table>") == 2 and text.count("<tr>") == 11 + 6  # the loss-by-method table and every cell


def test_report_takes_the_sweep_title(tmp_path):
    folder = _store(tmp_path / "sweep", _records())
    (folder / "sweep.json").write_text(json.dumps({"title": "Quick look"}))
    rep = write_report(folder, html=True)
    assert rep.markdown.read_text().startswith("# Quick look\n") and "<title>Quick look</title>" in rep.html.read_text()


def test_report_of_nothing_is_one_line(tmp_path, capsys):
    for folder in (tmp_path / "missing", _store(tmp_path / "empty", [])):
        code = main(["report", str(folder)])
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "missing").exists() and sorted(p.name for p in (tmp_path / "empty").iterdir()) == [
        "results.jsonl"]


def test_report_reads_a_store_being_written(tmp_path):
    folder = _store(tmp_path / "sweep", _records())
    with open(folder / "results.jsonl", "a") as fh:
        fh.write('{"key": "half a rec')  # a write in progress: skipped, left alone
    rep = write_report(folder)
    assert rep.records == 30 and (folder / "results.jsonl").read_text().endswith("half a rec")


# --- a real browser --------------------------------------------------------------------------------------------
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_html_report_renders_in_a_headless_browser(tmp_path):
    sync_api = import_or_fail("playwright.sync_api", "ITTRNA_REQUIRE_BROWSER")
    browser_path = _chromium()
    if browser_path is None:
        skip_unless_ci("no Chromium on this machine (apt-get install chromium)", "ITTRNA_REQUIRE_BROWSER")
    folder = _store(tmp_path / "sweep", _records())
    rep = write_report(folder, html=True)
    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        except Exception as exc:  # a browser that cannot start here (no display libraries, ...)
            skip_unless_ci(f"Chromium does not start: {str(exc).splitlines()[0]}", "ITTRNA_REQUIRE_BROWSER")
        try:
            page = browser.new_page()
            page.goto(rep.html.resolve().as_uri())
            page.wait_for_load_state("load")
            tables = page.locator("table")
            assert tables.count() == 2  # loss by method (settings x methods), then every cell
            for i, (rows, heads) in enumerate(((5, 2 + 2), (10, 3 + 8))):
                table = tables.nth(i)
                assert table.is_visible()
                assert table.locator("tbody tr").count() == rows
                assert table.locator("th").count() == heads
                box = table.bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 100
            # what a reader sees: the loss table's header and every cell of its first row, as report.md has them
            md_rows = [ln for ln in rep.markdown.read_text().splitlines() if ln.startswith("| ")]
            md_head = [c.strip() for c in md_rows[0].strip("|").split("|")]
            md_first = [c.strip() for c in md_rows[1].strip("|").split("|")]
            first = tables.nth(0)
            assert [t.strip() for t in first.locator("th").all_inner_texts()] == md_head == [
                "saf_rate", "sigma", "none", "remap"]
            cells = [t.strip() for t in first.locator("tbody tr").nth(0).locator("td").all_inner_texts()]
            assert cells == md_first and "±" in cells[2]
            images = page.locator("img")
            assert images.count() == 3
            sizes = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            assert all(done and w > 0 and h > 0 for done, w, h in sizes), sizes
            assert page.title() == f"Sweep report: {folder.name}"
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            assert (tmp_path / "report.png").read_bytes().startswith(PNG)
        finally:
            browser.close()


# --- benchmarks/paper_claims.py: the claims table of docs/REPRODUCTION.md -------------------------------------
def _claims_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_claims.py"
    spec = importlib.util.spec_from_file_location("paper_claims", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_claims_table_charges_retraining_gains_back_to_the_strict_reference(tmp_path):
    recs = []
    for method, ideal, sigma1 in (("none", 0.95, 0.60), ("remap", 0.95, 0.93), ("aft", 0.96, 0.955)):
        for sigma, acc in ((0.0, ideal), (1.0, sigma1)):
            for chip in (1, 2):
                recs.append({"key": f"{method}-{sigma}-{chip}", "model": "mlp", "dataset": "mnist", "saf_rate": 0.0,
                             "sigma": sigma, "method": method, "chip_seed": chip, "software_accuracy": 0.95,
                             "chip_accuracy": acc + (0.01 if chip == 2 else -0.01), "chip_accuracy_before": acc,
                             "writes": 10, "writes_performed": 10, "seconds": 1.0, "method_version": 1,
                             "ittrna_version": "0.1.0", "model_sha256": "s" * 64})
    claims = _claims_module()
    text = claims.claims_table([_store(tmp_path / "sweep", recs)])
    assert "software 95.00 %, strict reference 96.00 % (`aft` on the ideal chip)" in text
    row = next(line for line in text.splitlines() if line.startswith("| σ 1.0 |"))
    std = 100 * statistics.stdev([0.945, 0.965])
    assert row == (f"| σ 1.0 | < 1.1 | 35.00 ± {std:.2f} | `remap` 2.00 ± {std:.2f} | -0.50 ± {std:.2f} | "
                   f"0.50 ± {std:.2f} |")
    assert "SAF 20 %" not in text  # settings the sweep did not run are left out
    assert "On-device cost" not in text  # no method here wrote after the first programming
    hard = {"saf_rate": 0.2, "sigma": 1.0, "program_noise": 0.1, "read_noise": 0.02, "miss_rate": 0.05,
            "theta_noise": 0.2}
    for method, iters, extra in (("none", 0, 0), ("codesign", 5, 1000), ("ondevice", 860, 3_000_000)):
        for chip in (1, 2):
            recs.append({**recs[0], **hard, "key": f"hard-{method}-{chip}", "method": method, "chip_seed": chip,
                         "iterations": iters, "ondevice_writes": extra + chip, "chip_accuracy": 0.9})
    text = claims.claims_table([_store(tmp_path / "sweep2", recs)])
    assert ("On-device cost at hard chip (SAF 20 %, σ 1.0, noise, imperfect test), mean per chip: `codesign` 5 "
            "iterations, 1,002 writes after the first programming; `ondevice` 860 iterations, 3,000,002 writes "
            "after the first programming.") in text
    assert claims.main([str(tmp_path / "nothing")]) == 1


def test_points_never_prints_minus_zero():
    from ittrna.experiments.report import points

    assert points(-0.00001) == "0.00" and points(-0.0051) == "-0.51" and points(0.1234) == "12.34"


def test_every_method_keeps_one_distinct_colour_across_a_report():
    from ittrna.experiments.report import _method_colors

    rows = [{"method": m} for m in ["none", "aft", "none"] + [f"m{i}" for i in range(12)]]
    colours = _method_colors(rows)
    assert list(colours)[:2] == ["none", "aft"] and len(colours) == 14
    assert len(set(colours.values())) == 14  # past ten methods the palette widens rather than repeats


def test_a_tile_size_axis_gets_its_plot_with_the_columns_that_follow_it_folded_in(tmp_path):
    """IR drop against tile size: rows and columns of a tile vary together, so the columns are no curve of
    their own; one curve per wire resistance and method, along the tile size on a log2 axis."""
    from ittrna.experiments.report import _series

    recs = []
    for r_wire in (0.0, 2.5):
        for size in (64, 128, 256):
            for chip in (1, 2):
                acc = 0.98 - (0.01 * size / 256 if r_wire else 0.0) + 0.001 * chip
                recs.append({**_records()[0], "key": f"{r_wire}-{size}-{chip}", "saf_rate": 0.0, "sigma": 0.0,
                             "wires.r_wire": r_wire, "mapping.rows": size, "mapping.cols": size, "chip_seed": chip,
                             "chip_accuracy": acc, "chip_accuracy_before": acc})
    rows, shown = summarize(recs)
    curves, _ = _series(rows, "mapping.rows", shown)
    assert set(curves) == {"wires.r_wire=0, none", "wires.r_wire=2.5, none"}
    assert [r["mapping.rows"] for r in curves["wires.r_wire=2.5, none"]] == [64, 128, 256]
    rep = write_report(_store(tmp_path / "sweep", recs))
    assert [p.name for p in rep.plots] == ["accuracy_vs_tile_size.png", "accuracy_vs_writes.png"]
