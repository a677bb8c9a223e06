"""Hydra instantiates sweepers only from classes defined in the hydra_plugins package: this names
ours (pneumo_exp/search.py) there."""

from pneumo_exp.tracking import search


class SearchSweeper(search.SearchSweeper):
    """Optuna search over validation AUC: see pneumo_exp.search."""
