#!/bin/bash
# The executable of htcondor.sub: one ipphpc engine.
#
# The engine waits (up to --wait-for-file seconds) for the controller's connection file on
# the shared filesystem, registers, and reports the job's ClusterId / ProcId (read from the
# job ad HTCondor gives every job). It exits when the controller tells it to, or when the
# controller has been silent for --controller-timeout seconds; exec lets condor_rm's signal
# reach it directly.

# Make `ipphpc` available here if getenv is not enough, e.g.:
# source ~/venvs/ipphpc/bin/activate
exec ipphpc engine --profile="${IPPHPC_PROFILE:-default}" --cluster-id="${IPPHPC_CLUSTER_ID:-run7}" \
    --wait-for-file=600 --controller-timeout=120
