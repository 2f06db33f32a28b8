#!/usr/bin/env bash
# Installs the Debian packages lasp_streams needs: a Java 17+ runtime and Maven (which fetches
# the Kafka broker's jars from Maven Central), Prometheus (the metrics server the
# integration tests scrape workers with), Graphviz (`dot` draws the status page's graph) and
# Chromium (the headless browser the status page's test drives). Needs root or sudo. Services the packages ship are
# not started: lasp_streams starts its own Prometheus on 127.0.0.1 when it needs one.
set -euo pipefail
need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v prometheus >/dev/null || need+=(prometheus)
command -v dot >/dev/null || need+=(graphviz)
command -v chromium >/dev/null || need+=(chromium)
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
# --no-install-recommends: prometheus recommends node-exporter, a service we do not want.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
# The Debian package enables its service for the next boot (listening on every interface);
# lasp_streams runs its own Prometheus on 127.0.0.1 only when it needs one.
if [[ " ${need[*]} " == *" prometheus "* ]]; then
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
  else
    $sudo update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
fi
