"""What the browser test expects of each notebook after Run All in JupyterLab (keyed by its number).

FIGURES: the least number of figures a notebook's outputs must render (loaded <img>, ipympl figures,
other <canvas>); interactive cells may draw more than the batch run. WIDGETS: controls to use and the
outputs that must change, by the CSS classes the notebooks give their widgets (`widget.add_class`, shared
with the notebook authors). ANNOTATE: the annotate-yourself flow of notebook 09.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FIGURES = {  # as rendered in JupyterLab (interactive widgets included), counted on the smoke run
    "00": 0,
    "01": 5,  # four saved figures + the song player's curves
    "02": 1,
    "03": 2,
    "04": 3,
    "05": 2,
    "06": 4,
    "07": 2,
    "08": 3,  # the saved predictions + the listener picker's and the trait explorer's plots
    "09": 3,
}


@dataclass(frozen=True)
class WidgetCheck:
    """Use one control (`slide` a slider, `choose` another value in a picker) and expect one of the
    watched outputs to show something else afterwards."""

    name: str
    control: str
    action: str
    watch: tuple[str, ...]


WIDGETS = {
    "01": [WidgetCheck("song-picker", "dsaml-song-picker", "choose", ("dsaml-song-audio",))],
    "08": [
        WidgetCheck("trait-slider", "dsaml-trait-slider", "slide", ("dsaml-trait-plot", "dsaml-trait-metrics")),
        WidgetCheck("listener-picker", "dsaml-listener-picker", "choose", ("dsaml-listener-plot",)),
    ],
}

# The notebook 08 view copied to docs/jupyterlab.png when DSAML_UPDATE_SCREENSHOT=1 (after this check).
DOCS_SCREENSHOT = ("08", "trait-slider")


@dataclass(frozen=True)
class AnnotateFlow:
    """Notebook 09: shift the drawn curve, save it, adapt the model to it and predict."""

    notebook: str = "09"
    song: str = "dsaml-annotate-song"
    shift: str = "dsaml-annotate-shift-arousal"
    save: str = "dsaml-annotate-save"
    adapt: str = "dsaml-annotate-adapt"
    status: str = "dsaml-annotate-status"
    saved: re.Pattern = re.compile(r"saved\s+(\S.*?)\s*$", re.DOTALL)
    adapted: re.Pattern = re.compile(r"adapted\b.*\s(\S+)\s*$", re.DOTALL)


ANNOTATE = AnnotateFlow()
