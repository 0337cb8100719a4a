#!/usr/bin/env bash
# Accord's one test command; README.md and .ci/run call exactly this.
#
#   scripts/test.sh                      go vet, then every test with -race
#   scripts/test.sh -run TestQuickstart  extra arguments are go test flags
#
# The tests need PostgreSQL, MariaDB (or MySQL), NATS with JetStream, Redis and
# RabbitMQ. For the first three, the
# script uses the ones at ACCORD_TEST_DATABASE_URL, ACCORD_TEST_MYSQL_URL and
# ACCORD_TEST_NATS_URL when they answer. When those variables are unset and
# nothing answers at the defaults, it starts the machine's own servers, or
# else throwaway ones in temporary directories, removed on exit. A URL you set
# yourself is never replaced: if it does not answer, the script stops and
# says so.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PG_URL_DEFAULT="postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
MYSQL_URL_DEFAULT="mysql://root@127.0.0.1:3306/test"
NATS_URL_DEFAULT="nats://127.0.0.1:4222"
pg_explicit=${ACCORD_TEST_DATABASE_URL:+yes}
mysql_explicit=${ACCORD_TEST_MYSQL_URL:+yes}
nats_explicit=${ACCORD_TEST_NATS_URL:+yes}
export ACCORD_TEST_DATABASE_URL="${ACCORD_TEST_DATABASE_URL:-$PG_URL_DEFAULT}"
export ACCORD_TEST_MYSQL_URL="${ACCORD_TEST_MYSQL_URL:-$MYSQL_URL_DEFAULT}"
export ACCORD_TEST_NATS_URL="${ACCORD_TEST_NATS_URL:-$NATS_URL_DEFAULT}"

cleanups=()
cleanup() {
	local i
	for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do
		eval "${cleanups[i]}" || true
	done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { echo "test.sh: $*" >&2; }
die() {
	say "$*"
	exit 1
}

# redact hides a password in a URL before it is printed.
redact() { sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$1"; }

# hostport prints "host port" of a URL such as scheme://user:pw@host:port/path.
hostport() {
	local hp=${1#*://}
	hp=${hp#*@}
	hp=${hp%%/*}
	hp=${hp%%\?*}
	echo "${hp%:*} ${hp##*:}"
}

# tcp_open host port: is something listening there?
tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# free_port prints a TCP port on 127.0.0.1 that nothing listens on.
free_port() {
	local p
	for _ in $(seq 1 100); do
		p=$((20000 + RANDOM % 30000))
		if ! tcp_open 127.0.0.1 "$p"; then
			echo "$p"
			return
		fi
	done
	die "no free TCP port found"
}

# wait_for what tries: run tries every 0.2 s until it succeeds, at most 30 s.
wait_for() {
	local what=$1
	shift
	for _ in $(seq 1 150); do
		if "$@"; then return 0; fi
		sleep 0.2
	done
	say "$what did not become ready within 30 s"
	return 1
}

# ---------------------------------------------------------------- PostgreSQL

pg_ok() {
	if command -v psql >/dev/null; then
		psql -X "$ACCORD_TEST_DATABASE_URL" -Atqc 'SELECT 1' >/dev/null 2>&1
	elif command -v pg_isready >/dev/null; then
		pg_isready -q -d "$ACCORD_TEST_DATABASE_URL"
	else
		# shellcheck disable=SC2046
		tcp_open $(hostport "$ACCORD_TEST_DATABASE_URL")
	fi
}

# as_postgres runs a command as the postgres user when we are root (initdb
# and postgres refuse to run as root), as ourselves otherwise.
as_postgres() {
	if [[ $(id -u) -eq 0 ]]; then
		id postgres >/dev/null 2>&1 || die "running as root but there is no postgres user to run PostgreSQL as"
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

start_local_cluster() {
	command -v pg_ctlcluster >/dev/null || return 1
	local dir started=
	for dir in /etc/postgresql/*/main; do
		[[ -d $dir ]] || continue
		local version
		version=$(basename "$(dirname "$dir")")
		say "starting the local PostgreSQL cluster $version/main"
		if pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2; then
			started=yes
		fi
	done
	[[ -n $started ]] || return 1
	wait_for "PostgreSQL at $(redact "$ACCORD_TEST_DATABASE_URL")" pg_ok
}

start_throwaway_postgres() {
	local bin
	bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
	if [[ -z $bin || ! -x $bin/initdb || ! -x $bin/pg_ctl ]]; then
		die "PostgreSQL is not reachable at $(redact "$ACCORD_TEST_DATABASE_URL") and not installed.
  Install the Debian package postgresql (apt-get install postgresql) and rerun,
  or set ACCORD_TEST_DATABASE_URL to a database the tests may use."
	fi
	local dir port
	dir=$(mktemp -d /tmp/accord-test-pg.XXXXXX)
	cleanups+=("rm -rf '$dir'")
	[[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
	port=$(free_port)
	say "starting a throwaway PostgreSQL ($bin) in $dir on port $port"
	(cd "$dir" && as_postgres "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1) ||
		die "initdb failed; see $dir/initdb.log: $(tail -n 5 "$dir/initdb.log")"
	(cd "$dir" && as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
		-o "-h 127.0.0.1 -p $port -k $dir -c max_connections=300 -c fsync=off -c full_page_writes=off" start >/dev/null) ||
		die "PostgreSQL did not start; see $dir/server.log: $(tail -n 5 "$dir/server.log")"
	cleanups+=("(cd '$dir' && as_postgres '$bin/pg_ctl' -D '$dir/data' -m immediate stop >/dev/null 2>&1)")
	"$bin/psql" -X -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atqc 'CREATE DATABASE test' >/dev/null ||
		die "could not create database test in the throwaway PostgreSQL"
	export ACCORD_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/test?sslmode=disable"
	pg_used="throwaway instance in $dir, stopped on exit"
}

pg_used="already running"
if ! pg_ok; then
	[[ -z $pg_explicit ]] ||
		die "PostgreSQL is not reachable at ACCORD_TEST_DATABASE_URL=$(redact "$ACCORD_TEST_DATABASE_URL"); start it, or unset the variable to let this script start one"
	if start_local_cluster; then
		pg_used="local cluster, started by this script (left running)"
	else
		start_throwaway_postgres
	fi
fi
say "PostgreSQL: $(redact "$ACCORD_TEST_DATABASE_URL") ($pg_used)"

# ----------------------------------------------------------- MariaDB / MySQL

mysql_client=$(command -v mariadb || command -v mysql || true)

# mysql_args prints the client arguments for a mysql://user:pass@host:port/db URL.
mysql_args() {
	local rest=${1#*://} user=root pass= hp db
	if [[ $rest == *@* ]]; then
		user=${rest%%@*}
		rest=${rest#*@}
		if [[ $user == *:* ]]; then
			pass=${user#*:}
			user=${user%%:*}
		fi
	fi
	hp=${rest%%/*}
	db=${rest#*/}
	db=${db%%\?*}
	[[ $hp == *:* ]] || hp=$hp:3306
	printf '%s\n' -h "${hp%:*}" -P "${hp##*:}" -u "$user"
	[[ -z $pass ]] || printf '%s\n' "-p$pass"
	[[ $rest == */* && -n $db ]] && printf '%s\n' -D "$db"
	return 0
}

mysql_ok() {
	if [[ -n $mysql_client ]]; then
		local args
		mapfile -t args < <(mysql_args "$ACCORD_TEST_MYSQL_URL")
		"$mysql_client" --protocol=TCP --connect-timeout=2 "${args[@]}" -e 'SELECT 1' >/dev/null 2>&1
	else
		# shellcheck disable=SC2046
		tcp_open $(hostport "$ACCORD_TEST_MYSQL_URL")
	fi
}

start_machine_mysql() {
	[[ $ACCORD_TEST_MYSQL_URL == "$MYSQL_URL_DEFAULT" && $(id -u) -eq 0 && -x /usr/sbin/mariadbd ]] || return 1
	command -v start-stop-daemon >/dev/null || return 1
	if start-stop-daemon --status --exec /usr/sbin/mariadbd; then return 1; fi
	say "starting the machine's MariaDB server on 127.0.0.1:3306"
	start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd >&2 || return 1
	wait_for "MariaDB at $ACCORD_TEST_MYSQL_URL" mysql_ok
}

start_throwaway_mysql() {
	local server install
	server=$(command -v mariadbd || command -v mysqld || ls /usr/sbin/mariadbd /usr/sbin/mysqld 2>/dev/null | head -n 1 || true)
	install=$(command -v mariadb-install-db || command -v mysql_install_db || true)
	if [[ -z $server || -z $install || -z $mysql_client ]]; then
		die "MariaDB/MySQL is not reachable at $(redact "$ACCORD_TEST_MYSQL_URL") and not installed.
  Install the Debian package mariadb-server (apt-get install mariadb-server) and rerun,
  or set ACCORD_TEST_MYSQL_URL to a database the tests may use."
	fi
	local dir port pid user=()
	dir=$(mktemp -d /tmp/accord-test-mysql.XXXXXX)
	cleanups+=("rm -rf '$dir'")
	if [[ $(id -u) -eq 0 ]]; then
		id mysql >/dev/null 2>&1 || die "running as root but there is no mysql user to run MariaDB as"
		chown mysql: "$dir"
		user=(--user=mysql)
	fi
	port=$(free_port)
	say "starting a throwaway MariaDB ($server) in $dir on port $port"
	"$install" --no-defaults "${user[@]}" --datadir="$dir/data" --auth-root-authentication-method=normal \
		--skip-test-db >"$dir/install.log" 2>&1 ||
		die "$install failed; see $dir/install.log: $(tail -n 5 "$dir/install.log")"
	"$server" --no-defaults "${user[@]}" --datadir="$dir/data" --bind-address=127.0.0.1 --port="$port" \
		--socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" --log-error="$dir/server.log" \
		--max-connections=300 --innodb-flush-log-at-trx-commit=0 --skip-log-bin &
	pid=$!
	cleanups+=("kill $pid 2>/dev/null; wait $pid 2>/dev/null")
	export ACCORD_TEST_MYSQL_URL="mysql://root@127.0.0.1:$port/"
	wait_for "MariaDB on port $port" mysql_ok ||
		die "MariaDB did not start; see $dir/server.log: $(tail -n 5 "$dir/server.log" 2>/dev/null)"
	"$mysql_client" --protocol=TCP -h 127.0.0.1 -P "$port" -u root -e 'CREATE DATABASE test' ||
		die "could not create database test in the throwaway MariaDB"
	export ACCORD_TEST_MYSQL_URL="mysql://root@127.0.0.1:$port/test"
	mysql_used="throwaway instance in $dir, stopped on exit"
}

mysql_used="already running"
if ! mysql_ok; then
	[[ -z $mysql_explicit ]] ||
		die "MariaDB/MySQL is not reachable at ACCORD_TEST_MYSQL_URL=$(redact "$ACCORD_TEST_MYSQL_URL"); start it, or unset the variable to let this script start one"
	if start_machine_mysql; then
		mysql_used="machine's server, started by this script (left running)"
	else
		start_throwaway_mysql
	fi
fi
say "MariaDB/MySQL: $(redact "$ACCORD_TEST_MYSQL_URL") ($mysql_used)"

# ---------------------------------------------------------------------- NATS

nats_ok() {
	# shellcheck disable=SC2046
	tcp_open $(hostport "$ACCORD_TEST_NATS_URL")
}

nats_bin=$(command -v nats-server || true)
[[ -z $nats_bin && -x /usr/sbin/nats-server ]] && nats_bin=/usr/sbin/nats-server

start_machine_nats() {
	[[ $ACCORD_TEST_NATS_URL == "$NATS_URL_DEFAULT" && $(id -u) -eq 0 ]] || return 1
	[[ $nats_bin == /usr/sbin/nats-server && -d /var/lib/nats-server ]] || return 1
	command -v start-stop-daemon >/dev/null || return 1
	# A nats-server that runs but does not answer here is not ours to fix.
	if start-stop-daemon --status --exec /usr/sbin/nats-server; then return 1; fi
	say "starting the machine's NATS server (JetStream) on 127.0.0.1:4222"
	start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
		-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log >&2 || return 1
	wait_for "NATS at $ACCORD_TEST_NATS_URL" nats_ok
}

start_throwaway_nats() {
	if [[ -z $nats_bin ]]; then
		die "NATS is not reachable at $ACCORD_TEST_NATS_URL and nats-server is not installed.
  Install the Debian package nats-server (apt-get install nats-server) and rerun,
  or set ACCORD_TEST_NATS_URL to a NATS server with JetStream enabled."
	fi
	local dir port pid
	dir=$(mktemp -d /tmp/accord-test-nats.XXXXXX)
	cleanups+=("rm -rf '$dir'")
	port=$(free_port)
	say "starting a throwaway NATS server (JetStream) in $dir on port $port"
	"$nats_bin" -a 127.0.0.1 -p "$port" -js -sd "$dir/jetstream" -l "$dir/server.log" &
	pid=$!
	cleanups+=("kill $pid 2>/dev/null; wait $pid 2>/dev/null")
	export ACCORD_TEST_NATS_URL="nats://127.0.0.1:$port"
	wait_for "NATS at $ACCORD_TEST_NATS_URL" nats_ok ||
		die "NATS did not start; see $dir/server.log: $(tail -n 5 "$dir/server.log" 2>/dev/null)"
	nats_used="throwaway instance in $dir, stopped on exit"
}

nats_used="already running"
if ! nats_ok; then
	[[ -z $nats_explicit ]] ||
		die "NATS is not reachable at ACCORD_TEST_NATS_URL=$ACCORD_TEST_NATS_URL; start it (with JetStream: -js), or unset the variable to let this script start one"
	if start_machine_nats; then
		nats_used="machine's server, started by this script (left running)"
	else
		start_throwaway_nats
	fi
fi
say "NATS: $ACCORD_TEST_NATS_URL ($nats_used)"

# --------------------------------------------------------- Redis and RabbitMQ
# The broker tests also use Redis (streams) and RabbitMQ. They are started
# with the machine's own commands when they do not answer; there is no
# throwaway fallback for them (install the Debian packages redis-server and
# rabbitmq-server, or point ACCORD_TEST_REDIS_URL / ACCORD_TEST_AMQP_URL at
# servers).
export ACCORD_TEST_REDIS_URL="${ACCORD_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"
export ACCORD_TEST_AMQP_URL="${ACCORD_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"

redis_ok() { tcp_open $(hostport "$ACCORD_TEST_REDIS_URL"); }
amqp_ok() { tcp_open $(hostport "$ACCORD_TEST_AMQP_URL"); }

redis_used="already running"
if ! redis_ok; then
	command -v redis-server >/dev/null ||
		die "Redis is not reachable at $ACCORD_TEST_REDIS_URL and redis-server is not installed.
  Install the Debian package redis-server (apt-get install redis-server) and rerun,
  or set ACCORD_TEST_REDIS_URL to a Redis 5+ server."
	say "starting the machine's Redis server"
	mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
	redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
		--dir /var/lib/redis --logfile /var/log/redis/ci.log >&2 || true
	wait_for "Redis at $ACCORD_TEST_REDIS_URL" redis_ok || die "Redis did not start; see /var/log/redis/ci.log"
	redis_used="machine's server, started by this script (left running)"
fi
say "Redis: $ACCORD_TEST_REDIS_URL ($redis_used)"

amqp_used="already running"
if ! amqp_ok; then
	command -v rabbitmq-server >/dev/null ||
		die "RabbitMQ is not reachable at $(redact "$ACCORD_TEST_AMQP_URL") and rabbitmq-server is not installed.
  Install the Debian package rabbitmq-server (apt-get install rabbitmq-server) and rerun,
  or set ACCORD_TEST_AMQP_URL to a RabbitMQ server."
	say "starting the machine's RabbitMQ server (this takes a few seconds)"
	rabbitmq-server -detached >&2 || true
	for _ in $(seq 1 60); do amqp_ok && break; sleep 1; done
	amqp_ok || die "RabbitMQ did not start within 60 s; see /var/log/rabbitmq/"
	amqp_used="machine's server, started by this script (left running)"
fi
say "RabbitMQ: $(redact "$ACCORD_TEST_AMQP_URL") ($amqp_used)"

# --------------------------------------------------------------------- tests

say "go vet ./..."
go vet ./...
say "go test -race -count=1 -timeout 20m $* ./..."
go test -race -count=1 -timeout 20m "$@" ./...
