#!/usr/bin/env bash
# Install the factory edge gateway on Raspberry Pi OS / Debian (arm64, armhf, amd64).
# Idempotent: run it again after `git pull` to upgrade; a run with nothing to do
# changes nothing. Existing config files are never overwritten (the shipped version
# is put next to them as *.dist when it differs).
#
#   sudo deploy/install.sh [OPTIONS]
#
#   --with-simulator    also start simulated sensors (demo data; broker user simulator)
#   --with-notifier     also start the notification service (factory-notifier.service;
#                       configure channels and routes in /etc/factory-gateway/notifier.toml)
#   --tls               TLS listener on 8883 with a local CA (deploy/mosquitto/make-certs.sh)
#   --grafana           install the Grafana provisioning and dashboards (Grafana itself
#                       comes from Grafana's apt repository, see docs/deploy.md)
#   --influx-url URL    InfluxDB for the database step (default http://localhost:8086)
#   --database NAME     InfluxDB database (default factory)
#   --retention DUR     how long InfluxDB keeps readings (default 90d; e.g. 30d, 52w, INF)
#   --model-dir DIR     use this trained models directory (with its `current` link)
#                       instead of training a starter model on simulator data
#   --uninstall         stop and remove the services, /opt/factory-gateway and the units;
#                       keep config, models, spool and broker users
#   --purge             with --uninstall: remove config, state and broker users too
# For packaging and tests:
#   --prefix DIR        install into DIR as if it were / (implies --skip-packages)
#   --no-start          no systemctl actions and no InfluxDB set-up unless --influx-url
#   --skip-packages     no apt-get
#   --skip-venv         no virtualenv (implies --skip-model)
#   --skip-model        do not train or copy a model
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
R=""
START=1
PACKAGES=1
VENV=1
MODEL=1
MODEL_DIR=""
SIMULATOR=0
NOTIFIER=0
TLS=0
GRAFANA=0
INFLUX_URL="http://localhost:8086"
INFLUX_URL_GIVEN=0
DATABASE="factory"
RETENTION="90d"
UNINSTALL=0
PURGE=0

die() { echo "install: $*" >&2; exit 1; }
# The comment block at the top of this file, without the "# ".
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) R=$(realpath -m "${2:?--prefix needs a directory}"); PACKAGES=0; shift 2 ;;
    --no-start) START=0; shift ;;
    --skip-packages) PACKAGES=0; shift ;;
    --skip-venv) VENV=0; MODEL=0; shift ;;
    --skip-model) MODEL=0; shift ;;
    --model-dir) MODEL_DIR=$(realpath "${2:?}"); shift 2 ;;
    --with-simulator) SIMULATOR=1; shift ;;
    --with-notifier) NOTIFIER=1; shift ;;
    --tls) TLS=1; shift ;;
    --grafana) GRAFANA=1; shift ;;
    --influx-url) INFLUX_URL="${2:?}"; INFLUX_URL_GIVEN=1; shift 2 ;;
    --database) DATABASE="${2:?}"; shift 2 ;;
    --retention) RETENTION="${2:?}"; shift 2 ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ $PURGE -eq 0 || $UNINSTALL -eq 1 ]] || die "--purge goes with --uninstall"
[[ "$DATABASE" =~ ^[A-Za-z0-9_-]+$ ]] || die "database name: letters, digits, _ and - only"
[[ -n "$R" || $(id -u) -eq 0 ]] || die "run as root (sudo), or with --prefix DIR"

# Where things go (relative to the root R).
APP=/opt/factory-gateway
ETC=/etc/factory-gateway
CREDS=$ETC/credentials
STATE=/var/lib/factory-gateway
UNITS=/etc/systemd/system
MQ=/etc/mosquitto
CERTS=$MQ/certs/factory
HELPER=/usr/local/sbin/factory-mqtt-user
SYSUSERS=/etc/sysusers.d/factory-gateway.conf
GRAFANA_PROV=/etc/grafana/provisioning
GRAFANA_DASH=/var/lib/grafana/dashboards/factory
USER_NAME=factory-gw
SERVICES=(factory-gateway.service factory-api.service factory-simulator.service factory-serial@.service
  factory-notifier.service)
# The project's runtime code (tests, benchmarks and dev tools stay behind).
APP_DIRS=(api backtest common contract gateway model sensors notify config docs)
APP_FILES=(requirements.txt pyproject.toml README.md)

changes=0
changed() { changes=$((changes + 1)); echo "  $*"; }
step() { echo "install: $*"; }
EUID_=$(id -u)
as_root() { [[ $EUID_ -eq 0 ]]; }

# Numeric ids from the target root's own passwd/group (the user may exist only there).
uid_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$R/etc/passwd" 2>/dev/null || true; }
gid_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "$R/etc/group" 2>/dev/null || true; }
# The broker reads its password, ACL and key files as group mosquitto (when it exists).
mq_group() { if [[ -n "$(gid_of mosquitto)" ]]; then echo mosquitto; else echo root; fi; }

# set_meta PATH MODE [USER] [GROUP]: mode and owner, counted when they change.
set_meta() {
  local path="$1" mode="$2" user="${3:-root}" group="${4:-root}" uid=0 gid=0 now
  now=$(stat -c '%a %u:%g' "$path")
  if [[ "${now% *}" != "${mode#0}" ]]; then
    chmod "$mode" "$path"; changed "mode $mode ${path#"$R"}"
  fi
  as_root || return 0
  [[ "$user" == root ]] || uid=$(uid_of "$user")
  [[ "$group" == root ]] || gid=$(gid_of "$group")
  [[ -n "$uid" && -n "$gid" ]] || return 0
  if [[ "${now#* }" != "$uid:$gid" ]]; then
    chown "$uid:$gid" "$path"; changed "owner $user:$group ${path#"$R"}"
  fi
}

# put SRC DEST MODE [USER] [GROUP]: a managed file, replaced when it differs.
put() {
  local src="$1" dest="$R$2"
  [[ -d "${dest%/*}" ]] || mkdir -p "${dest%/*}"
  if ! cmp -s "$src" "$dest"; then
    install -m "$3" "$src" "$dest.tmp.$$" && mv -f "$dest.tmp.$$" "$dest"
    changed "wrote $2"
  fi
  set_meta "$dest" "${@:3}"
}

# put_config SRC DEST MODE [USER] [GROUP]: installed once, never overwritten.
put_config() {
  local src="$1" dest="$R$2"
  if [[ ! -e "$dest" ]]; then
    put "$@"
  elif ! cmp -s "$src" "$dest"; then
    if ! cmp -s "$src" "$dest.dist"; then
      cp "$src" "$dest.dist"
      changed "kept your $2; the shipped version is $2.dist"
    fi
    set_meta "$dest.dist" "${@:3}"
  fi
}

# ensure_dir DIR MODE [USER] [GROUP]
ensure_dir() {
  if [[ ! -d "$R$1" ]]; then mkdir -p "$R$1"; changed "created $1"; fi
  set_meta "$R$1" "${@:2}"
}

# sync_tree SRC DEST: copy a source tree (root-owned, read-only for the services) and
# remove files that are no longer in the source. Caches and bytecode are not copied.
sync_tree() {
  local src="$1" dest="$2" rel
  ensure_dir "$dest" 0755
  while IFS= read -r -d '' rel; do
    rel=${rel#./}
    if [[ -d "$src/$rel" ]]; then ensure_dir "$dest/$rel" 0755; else put "$src/$rel" "$dest/$rel" 0644; fi
  done < <(cd "$src" && find . -mindepth 1 \( -name __pycache__ -o -name '*.pyc' \) -prune -o -print0 | sort -z)
  while IFS= read -r -d '' rel; do
    rel=${rel#./}
    if [[ -n "$rel" && ! -e "$src/$rel" ]]; then rm -rf "$R$dest/${rel:?}"; changed "removed $dest/$rel"; fi
  done < <(cd "$R$dest" && find . -mindepth 1 \( -name __pycache__ -prune \) -o -print0 | sort -rz)
}

# ---------------------------------------------------------------- uninstall --------
if [[ $UNINSTALL -eq 1 ]]; then
  step "uninstalling from ${R:-/}"
  if [[ $START -eq 1 ]]; then
    mapfile -t running < <(systemctl list-units --all --plain --no-legend 'factory-*' | awk '{print $1}')
    [[ ${#running[@]} -eq 0 ]] || systemctl disable --now "${running[@]}" || true
    systemctl disable factory-gateway.service factory-api.service factory-simulator.service \
      factory-notifier.service 2>/dev/null || true
  fi
  remove() { # an absolute path under the root; never the root itself
    [[ "$1" == /?* ]] || die "refusing to remove '$1'"
    if [[ -e "$R$1" ]]; then rm -rf "$R$1"; changed "removed $1"; fi
  }
  for unit in "${SERVICES[@]}"; do remove "$UNITS/$unit"; done
  # Enablement links (also of serial instances whose device is unplugged).
  while IFS= read -r -d '' link; do
    rm -f "$link"; changed "removed ${link#"$R"}"
  done < <(find "$R$UNITS" -path '*.wants/factory-*' -type l -print0 2>/dev/null)
  remove "$APP"
  remove "$HELPER"
  if [[ $PURGE -eq 1 ]]; then
    for path in "$ETC" "$STATE" "$CERTS" "$MQ/conf.d/factory.conf" "$MQ/conf.d/factory-tls.conf" \
        "$MQ/factory.passwd" "$MQ/factory.acl" "$MQ/factory.acl.lock" "$SYSUSERS" \
        "$GRAFANA_PROV/datasources/factory-influxdb.yaml" "$GRAFANA_PROV/dashboards/factory.yaml" \
        "$GRAFANA_DASH"; do
      remove "$path"
    done
    echo "install: the InfluxDB database '$DATABASE' and the user $USER_NAME are kept;"
    echo "         drop them with: influx -execute 'DROP DATABASE \"$DATABASE\"'; userdel $USER_NAME"
  else
    echo "install: kept $ETC, $STATE (models, spool) and the broker users; --purge removes them"
  fi
  if [[ $START -eq 1 ]]; then
    systemctl daemon-reload
    systemctl try-restart mosquitto.service || true
  fi
  step "done ($changes changes)"
  exit 0
fi

# ---------------------------------------------------------------- install ----------
step "installing from $SRC into ${R:-/}"
if command -v dpkg >/dev/null; then step "architecture $(dpkg --print-architecture)"; fi

if [[ $PACKAGES -eq 1 ]]; then
  step "apt packages"
  export DEBIAN_FRONTEND=noninteractive
  wanted=(mosquitto mosquitto-clients influxdb influxdb-client python3-venv openssl)
  missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    changed "apt-get install ${missing[*]}"
  fi
fi

step "user $USER_NAME"
put "$SRC/deploy/systemd/factory-gateway.sysusers" "$SYSUSERS" 0644
if [[ -z "$(uid_of "$USER_NAME")" ]]; then
  mkdir -p "$R/etc"
  if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers ${R:+--root="$R"} "$SRC/deploy/systemd/factory-gateway.sysusers"
  elif [[ -z "$R" ]]; then
    useradd --system --user-group --home-dir "$STATE" --no-create-home \
      --shell /usr/sbin/nologin "$USER_NAME"
  else
    die "systemd-sysusers is needed to create $USER_NAME under --prefix"
  fi
  changed "created user $USER_NAME"
fi

step "application in $APP"
ensure_dir "$APP" 0755
ensure_dir "$APP/app" 0755
for dir in "${APP_DIRS[@]}"; do
  if [[ -d "$SRC/$dir" ]]; then sync_tree "$SRC/$dir" "$APP/app/$dir"; fi
done
for file in "${APP_FILES[@]}"; do
  if [[ -f "$SRC/$file" ]]; then put "$SRC/$file" "$APP/app/$file" 0644; fi
done

if [[ $VENV -eq 1 ]]; then
  step "virtualenv $APP/venv"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python >= 3.11 needed"
  [[ -x "$R$APP/venv/bin/python" ]] || { python3 -m venv "$R$APP/venv"; changed "created $APP/venv"; }
  stamp="$R$APP/venv/.requirements.sha256"
  want=$(sha256sum < "$SRC/requirements.txt" | cut -d' ' -f1)
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    # Raspberry Pi OS points pip at piwheels: prebuilt numpy/scikit-learn for armhf too.
    "$R$APP/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$R$APP/venv/bin/python" -m pip install -q --disable-pip-version-check -r "$SRC/requirements.txt"
    echo "$want" > "$stamp"
    changed "installed requirements.txt into $APP/venv"
  fi
  # The services cannot write to /opt (ProtectSystem=strict): compile once here.
  "$R$APP/venv/bin/python" -m compileall -q "$R$APP/app" >/dev/null
fi

step "configuration in $ETC"
ensure_dir "$ETC" 0755
ensure_dir "$CREDS" 0700
ensure_dir "$ETC/serial" 0755
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
# Relative paths of the development defaults (var/...) move to the state directory.
for conf in "$SRC"/config/*.toml; do
  sed -e "s#\"var/#\"$STATE/#g" -e "s#^database = \"factory\"#database = \"$DATABASE\"#" \
    "$conf" > "$rendered/$(basename "$conf")"
  put_config "$rendered/$(basename "$conf")" "$ETC/$(basename "$conf")" 0640 root "$USER_NAME"
done
for env in gateway api simulator; do
  put_config "$SRC/deploy/systemd/env/$env.env" "$ETC/$env.env" 0640 root "$USER_NAME"
done
put "$SRC/deploy/systemd/serial.env.example" "$ETC/serial/ttyUSB0.env.example" 0644
# The notifier's optional secrets (factory-notifier.service loads them): empty = unset.
if [[ -f "$SRC/deploy/systemd/factory-notifier.service" ]]; then
  for secret in smtp-password webhook-token webhook-url; do
    if [[ ! -e "$R$CREDS/notifier.$secret" ]]; then
      install -m 0600 /dev/null "$R$CREDS/notifier.$secret"
      changed "created empty $CREDS/notifier.$secret"
    fi
  done
fi

step "state in $STATE"
ensure_dir "$STATE" 0750 "$USER_NAME" "$USER_NAME"
ensure_dir "$STATE/models" 0750 "$USER_NAME" "$USER_NAME"
ensure_dir "$STATE/spool" 0750 "$USER_NAME" "$USER_NAME"
ensure_dir "$STATE/notify" 0750 "$USER_NAME" "$USER_NAME"
if [[ -n "$MODEL_DIR" && ! -e "$R$STATE/models/current" ]]; then
  [[ -e "$MODEL_DIR/current" ]] || die "--model-dir $MODEL_DIR has no 'current' model"
  cp -a "$MODEL_DIR/." "$R$STATE/models/"
  as_root && chown -R "$(uid_of "$USER_NAME"):$(gid_of "$USER_NAME")" "$R$STATE/models"
  changed "copied models from $MODEL_DIR"
elif [[ $MODEL -eq 1 && ! -e "$R$STATE/models/current" ]]; then
  step "training a starter model on 6 h of simulated data (replace it with one trained on your plant's data)"
  py="$R$APP/venv/bin/python"
  data="$R$STATE/starter-data.csv"
  (cd "$R$APP/app" && "$py" -m sensors.simulate --csv "$data" --lines 2 --devices 4 \
      --interval 1 --duration 21600 --seed 1 --faults all \
    && "$py" -m model train --csv "$data" --models-dir "$R$STATE/models" \
      --label-column is_anomaly --fault-column fault --timestamp-column ts)
  rm -f "$data"
  as_root && chown -R "$(uid_of "$USER_NAME"):$(gid_of "$USER_NAME")" "$R$STATE/models"
  changed "trained a starter model"
fi

step "broker (mosquitto) security"
before_broker=$changes
put_config "$SRC/deploy/mosquitto/factory.conf" "$MQ/conf.d/factory.conf" 0644
put "$SRC/deploy/mosquitto/factory-mqtt-user" "$HELPER" 0755
if command -v mosquitto_passwd >/dev/null; then
  broker_user() { # ROLE USER: add if missing; (re)issue the password if its credential is gone
    local cred="$R$CREDS/$2.mqtt-password"
    local opts=(--passwd "$R$MQ/factory.passwd" --acl "$R$MQ/factory.acl"
                --pid-file "$R/run/mosquitto/mosquitto.pid" --save "$cred")
    if ! grep -q -F -x "user $2" "$R$MQ/factory.acl" 2>/dev/null; then
      "$SRC/deploy/mosquitto/factory-mqtt-user" "${opts[@]}" "add-$1" "$2"
      changed "broker user $2 (password in $CREDS/$2.mqtt-password)"
    elif [[ ! -s "$cred" ]]; then
      "$SRC/deploy/mosquitto/factory-mqtt-user" "${opts[@]}" rotate "$2"
      changed "new password for broker user $2"
    fi
  }
  mkdir -p "$R$MQ"
  broker_user gateway gateway
  broker_user dashboard dashboard
  broker_user operator api   # the API publishes acknowledgements
  if [[ $SIMULATOR -eq 1 ]]; then broker_user simulator simulator; fi
  set_meta "$R$MQ/factory.passwd" 0640 root "$(mq_group)"
  set_meta "$R$MQ/factory.acl" 0640 root "$(mq_group)"
else
  echo "install: mosquitto_passwd not found: broker users not created (install mosquitto)" >&2
fi
if [[ $TLS -eq 1 ]]; then
  if [[ ! -f "$R$CERTS/server.crt" ]]; then
    ip=$(hostname -I 2>/dev/null | awk '{print $1}' || true)
    "$SRC/deploy/mosquitto/make-certs.sh" "$R$CERTS" ${ip:+"$ip"}
    changed "certificates in $CERTS"
  fi
  set_meta "$R$CERTS/server.key" 0640 root "$(mq_group)"
  put_config "$SRC/deploy/mosquitto/factory-tls.conf" "$MQ/conf.d/factory-tls.conf" 0644
  put "$R$CERTS/ca.crt" "$ETC/ca.crt" 0644
fi

broker_changes=$((changes - before_broker))

step "systemd units"
for unit in "${SERVICES[@]}"; do
  put "$SRC/deploy/systemd/$unit" "$UNITS/$unit" 0644
done

if [[ $GRAFANA -eq 1 ]]; then
  step "Grafana provisioning"
  sed -e "s#^\(\s*dbName:\s*\)factory\s*\$#\1$DATABASE#" \
    "$SRC/deploy/grafana/provisioning/datasources/influxdb.yaml" > "$rendered/influxdb.yaml"
  put_config "$rendered/influxdb.yaml" "$GRAFANA_PROV/datasources/factory-influxdb.yaml" 0644
  put "$SRC/deploy/grafana/provisioning/dashboards/factory.yaml" "$GRAFANA_PROV/dashboards/factory.yaml" 0644
  ensure_dir "$GRAFANA_DASH" 0755
  for dash in "$SRC"/deploy/grafana/dashboards/*.json; do
    put "$dash" "$GRAFANA_DASH/$(basename "$dash")" 0644
  done
fi

if [[ $START -eq 1 || $INFLUX_URL_GIVEN -eq 1 ]]; then
  if [[ $START -eq 1 ]]; then
    systemctl enable --now influxdb.service
  fi
  step "InfluxDB database $DATABASE, retention $RETENTION"
  python3 "$SRC/deploy/influxdb/create_database.py" --url "$INFLUX_URL" \
    --database "$DATABASE" --retention "$RETENTION"
fi

if [[ $START -eq 1 ]]; then
  step "services"
  systemctl daemon-reload
  systemctl enable mosquitto.service
  # The broker restarts only for its own files (sessions and queues survive it).
  if [[ $broker_changes -gt 0 ]]; then systemctl restart mosquitto.service; else systemctl start mosquitto.service; fi
  enable=(factory-gateway.service)
  if [[ -f "$SRC/api/__main__.py" ]]; then enable+=(factory-api.service); fi
  if [[ $SIMULATOR -eq 1 ]]; then enable+=(factory-simulator.service); fi
  if [[ $NOTIFIER -eq 1 ]]; then enable+=(factory-notifier.service); fi
  systemctl enable "${enable[@]}"
  # Restart what may run old code or config; start what is not running.
  if [[ $changes -gt $broker_changes ]]; then
    systemctl restart "${enable[@]}"
    systemctl try-restart 'factory-serial@*.service' || true
  else
    systemctl start "${enable[@]}"
  fi
  if [[ $GRAFANA -eq 1 ]]; then systemctl try-restart grafana-server.service || true; fi
  systemctl --no-pager --lines=3 status mosquitto.service influxdb.service "${enable[@]}" || true
fi

if [[ $changes -eq 0 ]]; then step "done: no changes"; else step "done: $changes changes"; fi
