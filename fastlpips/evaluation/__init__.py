"""Dataset-scale evaluation: full-reference metrics of folders of outputs against a reference folder
(``fastlpips evaluate``). ``specs``: the metric specifications and the record types; ``run``: the
run (file matching, deterministic batches, content-keyed records and resume, one run per results
folder, torchrun sharding, CSV/JSON); ``report``: the self-contained HTML report. See ``run``'s
docstring for the details."""
from .report import render_report
from .run import CONFIG_FILE, RECORDS_DIR, evaluate, match_files, method_names, read_labels
from .specs import EvaluationResult, Item, MetricSpec, parse_metric

__all__ = ["MetricSpec", "parse_metric", "EvaluationResult", "evaluate", "match_files", "Item",
           "method_names", "read_labels", "render_report", "CONFIG_FILE", "RECORDS_DIR"]
