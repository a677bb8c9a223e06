"""Evaluation: the threshold and metrics, scoring each held-out set, label-free adaptation and its
checks, a site's labelled sample, intervals and Grad-CAM."""
