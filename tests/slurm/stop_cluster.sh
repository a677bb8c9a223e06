#!/usr/bin/env bash
# Stops what start_cluster.sh started (munged is left running: other services may use it).
pkill -x slurmd || true
pkill -x slurmctld || true
