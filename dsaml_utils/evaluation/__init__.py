"""Stage 7, evaluation: the DMER and PDMER protocols, metrics.json, printed reports, curve files."""
