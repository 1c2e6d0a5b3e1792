"""evaluation.compare: one trained run scored under both protocols, as notebook 06 shows it."""

import math

import pytest
from test_train import one_thread, tiny_cache, tiny_config, tiny_ds, tiny_root  # noqa: F401 (fixtures)

from dsaml_utils.evaluation.compare import METRICS, protocol_rows, protocol_table
from dsaml_utils.evaluation.results import read_metrics
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.training.trainer import train


@pytest.fixture(scope="module")
def table(tiny_ds, tiny_root, tiny_cache, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("compare") / "run"
    cfg = tiny_config(tiny_root, tiny_cache, mode="pdmer", extra=["tasks.min_songs=2", "train.steps=1"])
    train(cfg, run, ds=tiny_ds, cache=FeatureCache(tiny_cache), progress=False)
    return run, protocol_table(run, ds=tiny_ds, cache=FeatureCache(tiny_cache), progress=False)


def test_both_columns_are_the_two_metrics_files(table):
    run, df = table
    paper, authors = read_metrics(run / "metrics.json"), read_metrics(run / "metrics-authors.json")
    assert paper.protocol_name == "paper" and authors.protocol_name == "authors"
    assert paper.model_digest == authors.model_digest  # the same weights in both columns
    dmer = df[df.part == "dmer"].set_index("metric")
    assert list(dmer.index) == list(METRICS)
    for metric in METRICS:
        assert dmer.loc[metric, "paper"] == pytest.approx(paper.summary("dmer")[metric].mean)
        assert dmer.loc[metric, "authors"] == pytest.approx(authors.summary("dmer")[metric].mean)
    assert dmer["n paper"].iloc[0] == len(paper.scores("dmer", 1).rows) > 0
    # stride-1 stitching in train mode is not the paper's averaged windows in eval mode
    assert not all(math.isclose(dmer.loc[m, "paper"], dmer.loc[m, "authors"]) for m in METRICS)


def test_a_part_one_protocol_leaves_empty_shows_no_value_and_n_0(table):
    run, _ = table
    paper, authors = read_metrics(run / "metrics.json"), read_metrics(run / "metrics-authors.json")
    df = protocol_rows({"paper": paper, "authors": authors})
    for part in df.part.unique():
        rows = df[df.part == part]
        for p in ("paper", "authors"):
            if (rows[f"n {p}"] == 0).all():
                assert rows[p].isna().all(), (part, p)
            else:
                assert rows[p].notna().all(), (part, p)
