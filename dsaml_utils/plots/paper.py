"""What the paper reports (its Tables 1-4 on DEAM), for orientation next to our tables."""

from __future__ import annotations

import pandas as pd

from dsaml_utils.plots.base import DIMS

PAPER_COLUMNS = [f"{d}_{m}" for d in DIMS for m in ("ccc", "pcc", "rmse")]
"""The paper's table columns: CCC, PCC and RMSE of arousal, then of valence."""


def _paper(rows: dict[str, tuple[float, ...]]) -> pd.DataFrame:
    return pd.DataFrame([{"model": k, **dict(zip(PAPER_COLUMNS, v))} for k, v in rows.items()])


PAPER_RESULTS = {
    "table1_deam": _paper({  # traditional DMER on DEAM
        "DSAML": (0.39, 0.675, 0.202, 0.104, 0.221, 0.26),
        "DAMFF": (0.354, 0.621, 0.217, 0.055, 0.043, 0.299),
        "MCRNN": (0.227, 0.374, 0.265, 0.029, -0.005, 0.297),
        "DNN": (0.188, 0.362, 0.261, 0.033, 0.003, 0.281),
        "CRNN": (0.244, 0.517, 0.218, 0.017, -0.039, 0.27)}),
    "table1_pmemo": _paper({
        "DSAML": (0.186, 0.386, 0.112, 0.108, 0.26, 0.122),
        "DAMFF": (0.175, 0.378, 0.118, 0.091, 0.335, 0.134),
        "MCRNN": (0.104, 0.266, 0.168, 0.038, 0.154, 0.169),
        "DNN": (0.087, 0.217, 0.151, 0.03, 0.134, 0.159),
        "CRNN": (0.076, 0.231, 0.183, 0.034, 0.224, 0.169)}),
    "table2": _paper({  # PDMER on DEAM; (MAML) = the paper's dagger rows
        "DSAML": (0.377, 0.541, 0.236, 0.092, 0.154, 0.245),
        "DAMFF (MAML)": (0.22, 0.414, 0.319, 0.035, 0.069, 0.344),
        "DAMFF": (0.232, 0.478, 0.342, 0.035, 0.008, 0.39),
        "MCRNN (MAML)": (0.173, 0.312, 0.332, 0.022, 0.021, 0.348),
        "MCRNN": (0.176, 0.301, 0.364, 0.015, -0.002, 0.391),
        "DNN (MAML)": (0.138, 0.273, 0.35, 0.01, -0.009, 0.367),
        "DNN": (0.153, 0.286, 0.361, 0.016, -0.004, 0.385),
        "CRNN (MAML)": (0.113, 0.29, 0.31, 0.008, -0.009, 0.337),
        "CRNN": (0.131, 0.365, 0.35, -0.001, -0.021, 0.366)}),
    "table3_deam": _paper({  # DMER ablations on DEAM
        "DSAML": (0.402, 0.633, 0.196, 0.117, 0.182, 0.267),
        "w/o local attention": (0.385, 0.624, 0.215, 0.077, 0.134, 0.268),
        "w/o global attention": (0.37, 0.594, 0.207, 0.084, 0.148, 0.283),
        "w/o attention loss": (0.338, 0.564, 0.221, 0.103, 0.185, 0.279),
        "w/o adapter": (0.329, 0.529, 0.221, 0.083, 0.12, 0.272)}),
    "table4": _paper({  # PDMER ablations on DEAM
        "DSAML": (0.377, 0.541, 0.236, 0.092, 0.154, 0.245),
        "w/o MAML": (0.305, 0.518, 0.332, 0.062, 0.095, 0.383),
        "w/o personalized tasks": (0.357, 0.533, 0.236, 0.08, 0.129, 0.256),
        "w/o both": (0.332, 0.566, 0.309, 0.061, 0.132, 0.359)}),
}
"""The paper's reported numbers (AAAI-25, Tables 1-4), for side-by-side comparison."""
