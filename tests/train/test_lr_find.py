"""scripts/find_lr.py: the LR range test on a tiny model."""

from __future__ import annotations

from conftest import make_image_folder, run_script


def test_find_lr_writes_its_plot_prints_a_suggestion_and_leaves_the_output_dir_alone(tmp_path):
    folder = make_image_folder(tmp_path / "photos", per_class=(12, 4))
    out, plot = tmp_path / "out", tmp_path / "plots" / "lr.png"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_script("find_lr.py", "--plot", plot, "--steps", "20", "--", "--data-dir", folder, "--model",
                        "test_resnet", "--no-pretrained", "--img-size", "64", "--num-workers", "0",
                        "--output-dir", out)
    assert plot.is_file() and plot.stat().st_size > 1000
    suggested = float(result.stdout.split("suggested --lr ")[1].split(":")[0])
    assert 1e-7 < suggested < 1 and "steepest descent" in result.stdout or "minimum / 10" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
