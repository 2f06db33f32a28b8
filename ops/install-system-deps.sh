#!/usr/bin/env bash
# Installs the Debian packages lasp_streams needs: a Java 17+ runtime and Maven (which fetches
# the Kafka broker's jars from Maven Central), and Prometheus (the metrics server the
# integration tests scrape workers with). Needs root or sudo. Services the packages ship are
# not started: lasp_streams starts its own Prometheus on 127.0.0.1 when it needs one.
set -euo pipefail
need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v prometheus >/dev/null || need+=(prometheus)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${need[*]}" >&2
$sudo apt-get update -qq
# policy-rc.d exit 101 = "do not start services from maintainer scripts" (Debian policy).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  trap '$sudo rm -f "$policy"' EXIT
fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
