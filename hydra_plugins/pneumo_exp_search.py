"""Hydra instantiates sweepers only from classes defined in the hydra_plugins package: this names
ours (pneumo_exp/tracking/search.py) there; that module imports MLflow only as a search runs,
as Hydra imports this one for every command."""

from pneumo_exp.tracking import search


class SearchSweeper(search.SearchSweeper):
    """Optuna search over validation AUC: see pneumo_exp.tracking.search."""
