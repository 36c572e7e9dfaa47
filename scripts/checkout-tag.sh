# Sourced by the test scripts after they set repo (the checkout's root): checkout_tag, six
# hex digits naming this checkout. It goes into the names of the containers, secrets and
# volumes their sandboxes create, because podman's storage is the machine's: test runs of
# two checkouts at once then never meet, and a run in the same checkout still finds and
# removes what a killed run of it left.
# shellcheck shell=bash
# shellcheck disable=SC2034 # used by the scripts that source this file
checkout_tag=$(printf '%s' "${repo:?set repo before sourcing checkout-tag.sh}" | sha256sum | cut -c1-6)
