#!/usr/bin/env bash
# Start the services of the integration tier on this machine, idempotently (run as root):
#   - sshd on 127.0.0.1:22 and :2200 with root's ed25519 key authorised (the `core.ssh` transport to localhost),
#   - munge, slurmctld and slurmd: a one-node SLURM cluster (the `core.slurm` scheduler),
#   - PostgreSQL and RabbitMQ started where installed but not listening (the production test tier),
#   - RabbitMQ's consumer_timeout lifted at run time, where RabbitMQ runs.
# Re-running it starts nothing twice. Exits 0 when everything is up, 1 (with the logs) when SLURM does not come up.
# Debian 12 packages: openssh-server slurm-wlm munge (apt-get install -y openssh-server slurm-wlm munge).
set -euo pipefail

say() { printf 'start-integration-services: %s\n' "$*"; }
die() {
  say "ERROR: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die 'run as root (it starts sshd, munged, slurmctld and slurmd)'
for tool in ssh-keygen ssh-keyscan ssh sinfo scontrol slurmctld slurmd munged; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] ||
    die "\`$tool\` is missing: apt-get install -y openssh-server slurm-wlm munge"
done

# ---------------------------------------------------------------- ssh to 127.0.0.1
ssh_dir="$HOME/.ssh"
key="$ssh_dir/id_ed25519"
mkdir -p "$ssh_dir"
chmod 700 "$ssh_dir"
if [ ! -f "$key" ]; then
  ssh-keygen -q -t ed25519 -N '' -C "root@$(hostname -s) (aiida-mlmat integration)" -f "$key"
  say "made the key $key"
else
  say "key $key exists"
fi
touch "$ssh_dir/authorized_keys"
chmod 600 "$ssh_dir/authorized_keys"
if ! grep -qxF "$(cat "$key.pub")" "$ssh_dir/authorized_keys"; then
  cat "$key.pub" >>"$ssh_dir/authorized_keys"
  say "authorised $key.pub for root"
else
  say "$key.pub already authorised"
fi

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

if port_open 127.0.0.1 22; then
  say 'sshd already listening on 127.0.0.1:22'
else
  if ! ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
    ssh-keygen -A >/dev/null
    say 'made the ssh host keys'
  fi
  mkdir -p /run/sshd
  chmod 755 /run/sshd
  /usr/sbin/sshd -o ListenAddress=127.0.0.1
  for _ in $(seq 50); do
    port_open 127.0.0.1 22 && break
    sleep 0.1
  done
  port_open 127.0.0.1 22 || die 'sshd did not start listening on 127.0.0.1:22'
  say 'started sshd on 127.0.0.1:22'
fi

# A second sshd on port 2200 (same host keys): the integration tier checks that a SLURM Computer on a port
# other than 22 is reached there (`mlmat setup --slurm-port`).
if port_open 127.0.0.1 2200; then
  say 'sshd already listening on 127.0.0.1:2200'
else
  /usr/sbin/sshd -o ListenAddress=127.0.0.1:2200 -o PidFile=/run/sshd-2200.pid
  for _ in $(seq 50); do
    port_open 127.0.0.1 2200 && break
    sleep 0.1
  done
  port_open 127.0.0.1 2200 || die 'sshd did not start listening on 127.0.0.1:2200'
  say 'started sshd on 127.0.0.1:2200'
fi

touch "$ssh_dir/known_hosts"
chmod 600 "$ssh_dir/known_hosts"
for host in 127.0.0.1 localhost; do
  if ssh-keygen -F "$host" -f "$ssh_dir/known_hosts" >/dev/null 2>&1; then
    say "$host already in known_hosts"
  else
    scanned="$(ssh-keyscan -T 10 -H "$host" 2>/dev/null || true)"
    [ -n "$scanned" ] || die "ssh-keyscan $host returned no key"
    printf '%s\n' "$scanned" >>"$ssh_dir/known_hosts"
    say "added $host to known_hosts"
  fi
done
if ssh-keygen -F '[127.0.0.1]:2200' -f "$ssh_dir/known_hosts" >/dev/null 2>&1; then
  say '[127.0.0.1]:2200 already in known_hosts'
else
  scanned="$(ssh-keyscan -T 10 -H -p 2200 127.0.0.1 2>/dev/null || true)"
  [ -n "$scanned" ] || die 'ssh-keyscan -p 2200 127.0.0.1 returned no key'
  printf '%s\n' "$scanned" >>"$ssh_dir/known_hosts"
  say 'added [127.0.0.1]:2200 to known_hosts'
fi
ssh -o BatchMode=yes -o ConnectTimeout=10 127.0.0.1 true || die 'ssh -o BatchMode=yes 127.0.0.1 true failed'
say 'ssh -o BatchMode=yes 127.0.0.1 works'

# ---------------------------------------------------------------- munge
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -f /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --keyfile=/etc/munge/munge.key
  else
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  say 'made /etc/munge/munge.key'
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 700 /etc/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
chmod 400 /etc/munge/munge.key
if pgrep -x munged >/dev/null; then
  say 'munged already running'
else
  su -s /bin/sh munge -c /usr/sbin/munged
  say 'started munged'
fi
for _ in $(seq 50); do
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
  sleep 0.1
done
munge -n | unmunge >/dev/null || die 'munge does not work (munge -n | unmunge)'

# ---------------------------------------------------------------- SLURM
node="$(hostname -s)"
cpus="$(nproc)"
mem_mb="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
real_memory=$((mem_mb * 9 / 10)) # slurmd drains a node that has less memory than configured
conf=/etc/slurm/slurm.conf
wanted="$(
  cat <<EOF
# Written by aiida-mlmat scripts/start-integration-services.sh: a one-node cluster for the integration tests.
ClusterName=localcluster
SlurmctldHost=$node
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
PluginDir=/usr/lib/x86_64-linux-gnu/slurm-wlm
MailProg=/bin/true
ReturnToService=2
SlurmUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
# Seconds between SIGTERM and SIGKILL when a job is cancelled or over its time limit (default 30).
KillWait=5
NodeName=$node CPUs=$cpus RealMemory=$real_memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
)"
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
changed=0
if [ -f "$conf" ] && [ "$(cat "$conf")" = "$wanted" ]; then
  say "$conf is up to date (node $node, $cpus CPUs, RealMemory $real_memory MB)"
else
  [ -f "$conf" ] && cp "$conf" "$conf.bak"
  printf '%s\n' "$wanted" >"$conf"
  changed=1
  say "wrote $conf (node $node, $cpus CPUs, RealMemory $real_memory MB)"
fi

if pgrep -x slurmctld >/dev/null; then
  say 'slurmctld already running'
  if [ "$changed" = 1 ]; then
    scontrol reconfigure && say 'slurmctld re-read the configuration (scontrol reconfigure)'
  fi
else
  slurmctld
  say 'started slurmctld'
fi
if pgrep -x slurmd >/dev/null; then
  say 'slurmd already running'
else
  slurmd
  say 'started slurmd'
fi

show_logs() {
  for log in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log /var/log/munge/munged.log; do
    [ -f "$log" ] && {
      echo "---- tail of $log"
      tail -n 40 "$log"
    }
  done >&2
  sinfo -N -l >&2 || true
}

deadline=$((SECONDS + 60))
resumed=0
while :; do
  state="$(sinfo -h -n "$node" -o '%t' 2>/dev/null | head -n 1 || true)"
  case "$state" in
    idle | mix | alloc | comp)
      say "SLURM node $node is $state"
      break
      ;;
    down* | drain* | drng* | fail* | inval*)
      if [ "$resumed" = 0 ]; then
        reason="$(sinfo -h -n "$node" -o '%E' 2>/dev/null || true)"
        scontrol update nodename="$node" state=resume || true
        say "node $node was $state ($reason): scontrol update nodename=$node state=resume"
        resumed=1
      fi
      ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ]; then
    say "SLURM node $node is not idle after 60 s (state: ${state:-no answer from sinfo})" >&2
    show_logs
    exit 1
  fi
  sleep 1
done

# ---------------------------------------------------------------- PostgreSQL and RabbitMQ (production tier)
# The production tier (MLMAT_TEST_PROFILE=psql) needs both on 127.0.0.1; start them where installed but down.
for service in postgresql:5432 rabbitmq-server:5672; do
  name="${service%%:*}"
  port="${service##*:}"
  if port_open 127.0.0.1 "$port"; then
    say "$name listening on 127.0.0.1:$port"
  elif command -v service >/dev/null 2>&1 && [ -e "/etc/init.d/$name" ]; then
    service "$name" start >/dev/null 2>&1 || true
    for _ in $(seq 60); do
      port_open 127.0.0.1 "$port" && break
      sleep 1
    done
    if port_open 127.0.0.1 "$port"; then say "started $name (127.0.0.1:$port)"; else say "note: $name did not start"; fi
  else
    say "note: $name is not installed: the production tier will skip (fail with CI=true)"
  fi
done

# ---------------------------------------------------------------- RabbitMQ consumer_timeout
if command -v rabbitmqctl >/dev/null 2>&1; then
  if timeout 60 rabbitmqctl eval 'application:set_env(rabbit, consumer_timeout, undefined).' >/dev/null 2>&1; then
    say 'RabbitMQ consumer_timeout lifted (application:set_env(rabbit, consumer_timeout, undefined))'
  else
    say 'note: could not lift RabbitMQ consumer_timeout (rabbitmqctl eval failed; is RabbitMQ running?); ignored'
  fi
else
  say 'rabbitmqctl not found: RabbitMQ consumer_timeout left alone'
fi

say 'all services up'
