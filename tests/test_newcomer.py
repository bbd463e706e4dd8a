"""A newcomer's first hour: one clear line for each bad input, words that count right (issue 13)."""

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from liftvid.cli import app
from liftvid.io.masks import find_mask, read_mask, write_mask
from liftvid.io.tables import read_queries_csv
from liftvid.pipelines.evaluate import evaluate_davis


def _block(shape, rows, cols):
    m = np.zeros(shape, np.uint8)
    m[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return m


def _davis(tmp_path, n_frames, writer):
    davis, results = tmp_path / "DAVIS", tmp_path / "res"
    for t in range(n_frames):
        m = _block((24, 32), (4 + t, 14 + t), (6, 20))
        writer(davis / "Annotations" / "480p" / "s" / f"{t:05d}.png", m)
        write_mask(results / "s" / f"{t:05d}.png", m)
    return davis, results


def test_eval_davis_with_only_the_first_frame_annotated_says_what_it_needs(tmp_path):
    davis, results = _davis(tmp_path, 1, write_mask)
    result = CliRunner().invoke(app, ["eval", "davis", str(results), "--davis", str(davis)])
    assert result.exit_code == 1
    assert "annotation of every frame" in result.output and "stack" not in result.output
    assert "Traceback" not in result.output


def test_plain_0_255_ground_truth_reads_as_one_object_as_propagate_reads_masks(tmp_path):
    def plain(path, mask):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask * 255).save(path)  # greyscale 0/255, no palette

    davis, results = _davis(tmp_path, 5, plain)
    report = evaluate_davis(results, davis)
    assert not report.missing and len(report.objects) == 1
    np.testing.assert_allclose(report.objects[0].j, 1.0)


def test_eval_davis_says_when_it_resizes_results_of_another_size(tmp_path):
    davis, results = _davis(tmp_path, 4, write_mask)
    for t in range(4):  # results at twice the size
        big = np.kron(read_mask(results / "s" / f"{t:05d}.png"), np.ones((2, 2), np.uint8))
        write_mask(results / "s" / f"{t:05d}.png", big)
    report = evaluate_davis(results, davis)
    assert any("48×64, the annotations 24×32" in note for note in report.notes)
    np.testing.assert_allclose(report.objects[0].j, 1.0)


def test_queries_csv_with_a_byte_order_mark_and_a_binary_one(tmp_path):
    bom = tmp_path / "q.csv"
    bom.write_bytes("\ufeffvideo_id,t,x,y\nclip,0,3,4\n".encode("utf-8"))
    rows = read_queries_csv(bom)
    assert [(r.video_id, r.t, r.x, r.y) for r in rows] == [("clip", 0.0, 3.0, 4.0)]
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage")
    result = CliRunner().invoke(app, ["track", str(tmp_path / "nostore.zarr"), "--queries", str(binary),
                                      "--out", str(tmp_path / "t.csv")])
    assert result.exit_code == 1
    try:
        read_queries_csv(binary)
    except ValueError as exc:
        assert str(exc).startswith(f"{binary}: not a UTF-8 text CSV")
    else:
        raise AssertionError("a binary CSV was read")


def test_a_16_bit_binary_mask_is_one_object(tmp_path):
    mask = _block((20, 30), (5, 12), (4, 20)).astype(np.uint16) * 65535
    path = tmp_path / "m.png"
    Image.fromarray(mask).save(path)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(read_mask(path), mask > 0)


def test_an_empty_sequence_folder_does_not_hide_its_png(tmp_path):
    (tmp_path / "bear").mkdir()
    write_mask(tmp_path / "bear.png", _block((8, 8), (2, 5), (2, 5)))
    assert find_mask(tmp_path, "bear") == tmp_path / "bear.png"


def test_a_mask_of_another_aspect_ratio_is_stretched_with_a_warning(tmp_path, caplog):
    write_mask(tmp_path / "m.png", _block((10, 10), (2, 5), (2, 5)))
    with caplog.at_level("WARNING"):
        out = read_mask(tmp_path / "m.png", size=(20, 40))
    assert out.shape == (20, 40)
    assert "10×10, the video 20×40" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        read_mask(tmp_path / "m.png", size=(20, 20))  # same aspect: no warning
    assert not caplog.text


def test_version():
    from liftvid import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"liftvid {__version__}"
