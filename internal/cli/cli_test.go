package cli

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/broker"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/internal/sqlstore"
	"github.com/accordgo/accord/migrate"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// testTimeout bounds every wait in these tests.
const testTimeout = 30 * time.Second

// syncBuffer is a bytes.Buffer safe for a command writing while the test
// reads, which signals every write.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{written: make(chan struct{}, 1)} }

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	select {
	case b.written <- struct{}{}:
	default:
	}
	return n, err
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor returns the first line of b that contains s, failing t if none
// appears within testTimeout.
func (b *syncBuffer) waitFor(t *testing.T, s string, stderr *syncBuffer) string {
	t.Helper()
	deadline := time.NewTimer(testTimeout)
	defer deadline.Stop()
	for {
		for _, line := range strings.Split(b.String(), "\n") {
			if strings.Contains(line, s) {
				return line
			}
		}
		select {
		case <-b.written:
		case <-deadline.C:
			require.FailNow(t, "timed out waiting for output", "want a line containing %q\nstdout:\n%s\nstderr:\n%s", s, b.String(), stderr.String())
		}
	}
}

// result is the outcome of one command run.
type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs the accord command in process with args and an environment
// made of env only (the test process's environment is ignored).
func runCLI(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	stdout, stderr := newSyncBuffer(), newSyncBuffer()
	code := testApp(stdout, stderr, env).run(ctx, args)
	res := result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	t.Logf("accord %s → %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, res.stdout, res.stderr)
	return res
}

// stopRelay cancels a running `accord relay` (cancel ends its context) and
// requires it to exit 0 within testTimeout; done receives its exit code.
func stopRelay(t *testing.T, cancel context.CancelFunc, done <-chan int, stderr *syncBuffer) {
	t.Helper()
	cancel()
	select {
	case code := <-done:
		require.Equal(t, exitOK, code, "stderr:\n%s", stderr.String())
	case <-time.After(testTimeout):
		require.FailNow(t, "relay did not stop after its context was cancelled", "stderr:\n%s", stderr.String())
	}
}

func testApp(stdout, stderr *syncBuffer, env map[string]string) *app {
	return &app{stdout: stdout, stderr: stderr, lookupEnv: func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}}
}

func requireCode(t *testing.T, want int, res result) {
	t.Helper()
	require.Equal(t, want, res.code, "exit code\nstdout:\n%s\nstderr:\n%s", res.stdout, res.stderr)
}

func sqliteURL(t *testing.T) string {
	t.Helper()
	return "sqlite://" + filepath.Join(t.TempDir(), "accord.db")
}

// postgresSchema returns a fresh schema name on the test database that is
// dropped when the test ends. The schema itself is created by `migrate up`.
func postgresSchema(t *testing.T) string {
	t.Helper()
	db := dbtest.Postgres(t)
	schema := dbtest.RandomName("t_")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		_, err := db.ExecContext(ctx, fmt.Sprintf(`DROP SCHEMA IF EXISTS %q CASCADE`, schema))
		require.NoError(t, err)
	})
	return schema
}

func TestMain_Version(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	code := Main([]string{"version"}, &stdout, &stderr)
	require.Equal(t, exitOK, code, stderr.String())
	require.Regexp(t, `^accord (devel|v\S+) \(go\S+\)\n$`, stdout.String())
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	migrated := dbtest.SQLite(t).URL
	for _, tt := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"RelayWithoutDatabaseURL", nil, []string{"relay"}, "--database-url is required (or set ACCORD_DATABASE_URL)"},
		// Lease flags: rejected by the relay (below relay.LeaseTTLMin) or the command.
		{"LeaseTTLTooShort", nil, []string{"relay", "--database-url", migrated, "--lease-ttl", "100ms"},
			"accord relay: invalid config: LeaseTTL 100ms: must be at least 500ms"},
		{"LeaseTTLTooShortFromEnv", map[string]string{"ACCORD_LEASE_TTL": "100ms"}, []string{"relay", "--database-url", migrated},
			"LeaseTTL 100ms: must be at least 500ms"},
		{"LeaseTTLZero", nil, []string{"relay", "--database-url", migrated, "--lease-ttl", "0"}, "--lease-ttl positive"},
		{"LeaseTTLNotADuration", nil, []string{"relay", "--database-url", migrated, "--lease-ttl", "10"}, `invalid argument "10" for "--lease-ttl"`},
		{"DisableLeasesNotABoolFromEnv", map[string]string{"ACCORD_DISABLE_LEASES": "maybe"}, []string{"relay", "--database-url", migrated},
			`ACCORD_DISABLE_LEASES="maybe" (for --disable-leases)`},
		{"InstanceIDTooLong", map[string]string{"ACCORD_INSTANCE_ID": strings.Repeat("x", 201)}, []string{"relay", "--database-url", migrated},
			"InstanceID: 201 bytes, at most 200"},
		{"RelayUnknownDialect", nil, []string{"relay", "--database-url", "redis://x"}, `database URL scheme "redis"`},
		{"RelayUnknownBroker", nil, []string{"relay", "--database-url", migrated, "--broker", "mqtt://k:1883"}, "supported are gochannel"},
		{"RelayInvalidKafkaURL", nil, []string{"relay", "--database-url", migrated, "--broker", "kafka://k:9092?acks=1"}, `unknown query parameter "acks"`},
		{"RelayInvalidRabbitMQURL", nil, []string{"relay", "--database-url", migrated, "--broker", "amqp://guest:hunter2@rabbit:5672/?declare_queue=maybe"}, "declare_queue"},
		{"RelayInvalidBrokerURL", nil, []string{"relay", "--database-url", migrated, "--broker", "nats://127.0.0.1:4222?subject_prefix=a..b"}, "subject_prefix"},
		{"RelayInvalidConfig", nil, []string{"relay", "--database-url", migrated, "--lanes", "5000"}, "accord relay: invalid config: Lanes 5000"},
		{"RelaySchemaOnSQLite", nil, []string{"relay", "--database-url", migrated, "--schema", "app"}, "sqlite has no schemas"},
		{"RelayZeroBatchSize", nil, []string{"relay", "--database-url", migrated, "--batch-size", "0"}, "--batch-size must be at least 1"},
		{"RelayBadLogFormat", nil, []string{"relay", "--database-url", migrated, "--log-format", "xml"}, `--log-format "xml"`},
		{"RelayBadLogLevelFromEnv", map[string]string{"ACCORD_LOG_LEVEL": "loud"}, []string{"relay", "--database-url", migrated}, `--log-level "loud"`},
		{"RelayBadLanesFromEnv", map[string]string{"ACCORD_LANES": "many"}, []string{"relay"}, `ACCORD_LANES="many" (for --lanes)`},
		{"RelayBadHTTPAddr", nil, []string{"relay", "--database-url", migrated, "--http-addr", "9464"}, `--http-addr "9464": address 9464: missing port in address`},
		{"RelayBadHTTPAddrFromEnv", map[string]string{"ACCORD_HTTP_ADDR": "localhost"}, []string{"relay", "--database-url", migrated}, `--http-addr "localhost"`},
		{"RelayUnknownFlag", nil, []string{"relay", "--lane", "3"}, "unknown flag: --lane"},
		{"RelayArgument", nil, []string{"relay", "now"}, `unknown command "now"`},
		{"UnknownCommand", nil, []string{"publish"}, `unknown command "publish" for "accord"`},
		{"UnknownMigrateCommand", nil, []string{"migrate", "sideways"}, `unknown command "sideways" for "accord migrate"`},
		{"MigrateUpWithoutDatabaseURL", nil, []string{"migrate", "up"}, "--database-url is required"},
		{"MigrateUpUnknownVersion", nil, []string{"migrate", "up", "--database-url", sqliteURL(t), "--target-version", "99"}, "unknown migration version"},
		{"MigrateDownConflictingFlags", nil, []string{"migrate", "down", "--database-url", migrated, "--all", "--max-steps", "2"}, "[all max-steps] were all set"},
		{"MigrateDownZeroSteps", nil, []string{"migrate", "down", "--database-url", migrated, "--max-steps", "0"}, "--max-steps must be at least 1"},
		{"MigrateSQLWithoutDialect", nil, []string{"migrate", "sql"}, "--database-url or --dialect is required"},
		{"MigrateSQLUnknownDialect", nil, []string{"migrate", "sql", "--dialect", "oracle"}, `unknown SQL dialect: "oracle"`},
		{"MigrateSQLDialectMismatch", nil, []string{"migrate", "sql", "--dialect", "sqlite", "--database-url", "postgres://db/app"}, "--dialect sqlite does not match the postgres --database-url"},
		{"MigrateSQLBadDirection", nil, []string{"migrate", "sql", "--dialect", "sqlite", "--direction", "sideways"}, `--direction "sideways"`},
		{"MigrateSQLUnknownVersion", nil, []string{"migrate", "sql", "--dialect", "sqlite", "--version", "42"}, "unknown migration version: 42"},
		{"MigrateBadPrefix", nil, []string{"migrate", "list", "--database-url", migrated, "--table-prefix", "Bad-Prefix"}, `TablePrefix "Bad-Prefix"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := runCLI(t, tt.env, tt.args...)
			requireCode(t, exitUsage, res)
			require.Contains(t, res.stderr, tt.want)
			require.Contains(t, res.stderr, "--help' for usage.")
		})
	}
}

// migrateTarget is one database the migrate commands run against.
type migrateTarget struct {
	dialect accord.Dialect
	env     map[string]string
	args    []string // --database-url and --schema, unless in env
}

func TestMigrate(t *testing.T) {
	t.Parallel()

	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		schema := postgresSchema(t)
		testMigrate(t, migrateTarget{dialect: accord.Postgres, args: []string{"--database-url", dbtest.PostgresURL(), "--schema", schema}})
	})
	t.Run("mysql", func(t *testing.T) {
		t.Parallel()
		db := dbtest.MySQL(t)
		schema := dbtest.RandomName("t_")
		t.Cleanup(func() {
			_, err := db.Exec("DROP DATABASE IF EXISTS `" + schema + "`")
			require.NoError(t, err)
		})
		testMigrate(t, migrateTarget{dialect: accord.MySQL, args: []string{"--database-url", dbtest.MySQLURL(), "--schema", schema}})
	})
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		// The URL comes from the environment, as in a deployment.
		testMigrate(t, migrateTarget{dialect: accord.SQLite, env: map[string]string{"ACCORD_DATABASE_URL": sqliteURL(t)}})
	})
}

// migrationNames returns "NNN_name" of every migration of dialect d, oldest
// first.
func migrationNames(t *testing.T, d accord.Dialect) []string {
	t.Helper()
	db := sql.OpenDB(noConnector{})
	t.Cleanup(func() { _ = db.Close() })
	m, err := migrate.New(db, &migrate.Config{Dialect: d})
	require.NoError(t, err)
	var names []string
	for _, mig := range m.All() {
		names = append(names, fmt.Sprintf("%03d_%s", mig.Version, mig.Name))
	}
	require.GreaterOrEqual(t, len(names), 2, "the test needs at least two migrations")
	return names
}

// linesRe matches output made of one line per name: prefix, the name and
// the given suffix pattern.
func linesRe(prefix string, names []string, suffix string) string {
	var b strings.Builder
	b.WriteString("^")
	for _, n := range names {
		b.WriteString(regexp.QuoteMeta(prefix+n) + suffix + `\n`)
	}
	b.WriteString("$")
	return b.String()
}

func reversed(s []string) []string {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}

func testMigrate(t *testing.T, target migrateTarget) {
	t.Helper()
	migrateCmd := func(args ...string) result {
		t.Helper()
		return runCLI(t, target.env, append(append([]string{"migrate"}, args...), target.args...)...)
	}
	names := migrationNames(t, target.dialect)
	first, last := names[0], names[len(names)-1]
	const took = ` \(\S+\)`

	res := migrateCmd("validate")
	requireCode(t, exitFailure, res)
	require.Contains(t, res.stderr, "not migrated: missing "+strings.Join(names, ", ")+";")

	res = migrateCmd("up", "--dry-run")
	requireCode(t, exitOK, res)
	require.Regexp(t, linesRe("would apply ", names, ""), res.stdout)

	res = migrateCmd("list")
	requireCode(t, exitOK, res)
	require.True(t, strings.HasPrefix(res.stdout, "VERSION  NAME"), res.stdout)
	require.Equal(t, len(names), strings.Count(res.stdout, " pending "), res.stdout)

	res = migrateCmd("up", "--max-steps", "1")
	requireCode(t, exitOK, res)
	require.Regexp(t, linesRe("applied ", names[:1], took), res.stdout)

	res = migrateCmd("list")
	requireCode(t, exitOK, res)
	require.Regexp(t, `\n`+strings.Replace(first, "_", `\s+`, 1)+`\s+applied\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n`, res.stdout)
	require.Equal(t, len(names)-1, strings.Count(res.stdout, " pending "), res.stdout)

	res = migrateCmd("validate")
	requireCode(t, exitFailure, res)
	require.Contains(t, res.stderr, "missing "+strings.Join(names[1:], ", ")+";")
	require.NotContains(t, res.stderr, first)

	res = migrateCmd("up")
	requireCode(t, exitOK, res)
	require.Regexp(t, linesRe("applied ", names[1:], took), res.stdout)

	res = migrateCmd("up")
	requireCode(t, exitOK, res)
	require.Contains(t, res.stdout, "nothing to apply")

	res = migrateCmd("validate")
	requireCode(t, exitOK, res)
	require.Equal(t, fmt.Sprintf("ok: all %d migrations are applied (latest is %s)\n", len(names), last[:3]), res.stdout)

	res = migrateCmd("down", "--dry-run")
	requireCode(t, exitOK, res)
	require.Equal(t, "would revert "+last+"\n", res.stdout)

	res = migrateCmd("down")
	requireCode(t, exitOK, res)
	require.Regexp(t, linesRe("reverted ", []string{last}, took), res.stdout)

	res = migrateCmd("validate")
	requireCode(t, exitFailure, res)
	require.Contains(t, res.stderr, "missing "+last+";")

	requireCode(t, exitOK, migrateCmd("up"))
	res = migrateCmd("down", "--target-version", "1")
	requireCode(t, exitOK, res)
	require.Regexp(t, linesRe("reverted ", reversed(names[1:]), took), res.stdout)

	requireCode(t, exitOK, migrateCmd("up"))
	res = migrateCmd("down", "--all")
	requireCode(t, exitOK, res)
	require.Regexp(t, linesRe("reverted ", reversed(names), took), res.stdout)

	res = migrateCmd("list")
	requireCode(t, exitOK, res)
	require.NotContains(t, res.stdout, "applied")

	res = migrateCmd("down")
	requireCode(t, exitOK, res)
	require.Equal(t, "nothing to revert\n", res.stdout)
}

func TestMigrateSQL(t *testing.T) {
	t.Parallel()

	t.Run("AllUpFromDialect", func(t *testing.T) {
		t.Parallel()
		res := runCLI(t, nil, "migrate", "sql", "--dialect", "sqlite")
		requireCode(t, exitOK, res)
		require.Contains(t, res.stdout, "-- accord migration 001_migration_table (up)")
		require.Contains(t, res.stdout, "-- accord migration 002_outbox (up)")
		require.Less(t, strings.Index(res.stdout, "001_migration_table"), strings.Index(res.stdout, "002_outbox"))
		require.Contains(t, res.stdout, `CREATE TABLE "accord_outbox"`)
	})

	t.Run("OneDownFromDatabaseURL", func(t *testing.T) {
		t.Parallel()
		// The URL only selects the dialect: nothing listens on port 1.
		res := runCLI(t, nil, "migrate", "sql", "--database-url", "postgres://app@127.0.0.1:1/app",
			"--schema", "billing", "--direction", "down", "--version", "2")
		requireCode(t, exitOK, res)
		require.True(t, strings.HasPrefix(res.stdout, "-- accord migration 002_outbox (down)\n"), res.stdout)
		require.Contains(t, res.stdout, `"billing"."accord_outbox"`)
		require.NotContains(t, res.stdout, "001_migration_table")
	})

	t.Run("FlagBeatsEnvBeatsDefault", func(t *testing.T) {
		t.Parallel()
		env := map[string]string{"ACCORD_DATABASE_URL": "sqlite:///nonexistent/dir/app.db", "ACCORD_TABLE_PREFIX": "fromenv_"}

		res := runCLI(t, nil, "migrate", "sql", "--dialect", "sqlite", "--version", "2")
		requireCode(t, exitOK, res)
		require.Contains(t, res.stdout, `"accord_outbox"`)

		res = runCLI(t, env, "migrate", "sql", "--version", "2")
		requireCode(t, exitOK, res)
		require.Contains(t, res.stdout, `"fromenv_outbox"`)

		res = runCLI(t, env, "migrate", "sql", "--version", "2", "--table-prefix", "fromflag_")
		requireCode(t, exitOK, res)
		require.Contains(t, res.stdout, `"fromflag_outbox"`)
		require.NotContains(t, res.stdout, "fromenv_")
	})
}

func TestRelay(t *testing.T) {
	t.Parallel()

	t.Run("NotMigrated", func(t *testing.T) {
		t.Parallel()
		res := runCLI(t, nil, "relay", "--database-url", sqliteURL(t), "--http-addr", "127.0.0.1:0")
		requireCode(t, exitFailure, res)
		require.Contains(t, res.stderr, "table does not exist (outbox not migrated)")
		require.Contains(t, res.stderr, "accord migrate up")
		require.NotContains(t, res.stderr, "for usage")
	})

	t.Run("NotMigratedSchema", func(t *testing.T) {
		t.Parallel()
		res := runCLI(t, nil, "relay", "--database-url", dbtest.PostgresURL(), "--schema", dbtest.RandomName("t_"), "--http-addr", "off")
		requireCode(t, exitFailure, res)
		require.Contains(t, res.stderr, "table does not exist (outbox not migrated)")
	})

	// An event written in a transaction comes out of `accord relay --broker
	// log` as one JSON line, leaves the outbox, and the relay exits 0 when
	// its context is cancelled.
	dbtest.Dialects(t, func(t *testing.T, env dbtest.Env) {
		ctx := context.Background()
		ob, err := outbox.New(&outbox.Config{Dialect: env.Dialect, Schema: env.Schema})
		require.NoError(t, err)
		msg := outbox.NewMessage([]byte(`{"order_id":"42","total":"9.99"}`))
		msg.Metadata.Set("event_type", "OrderPlaced")
		tx, err := env.DB.BeginTx(ctx, nil)
		require.NoError(t, err)
		require.NoError(t, ob.WriteTx(ctx, tx, outbox.Event{Topic: "orders.placed", Key: "order-42", Message: msg}))
		require.NoError(t, tx.Commit())

		args := []string{"relay", "--database-url", env.URL, "--broker", "log", "--log-format", "json", "--poll-interval", "20ms",
			"--http-addr", "127.0.0.1:0"} // the default port would clash between parallel tests
		if env.Schema != "" {
			args = append(args, "--schema", env.Schema)
		}
		runCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		stdout, stderr := newSyncBuffer(), newSyncBuffer()
		done := make(chan int, 1)
		go func() { done <- testApp(stdout, stderr, nil).run(runCtx, args) }()

		var line broker.LogLine
		require.NoError(t, json.Unmarshal([]byte(stdout.waitFor(t, msg.UUID, stderr)), &line))
		require.Equal(t, msg.UUID, line.UUID)
		require.Equal(t, "orders.placed", line.Topic)
		require.NotNil(t, line.Payload)
		require.Equal(t, string(msg.Payload), *line.Payload)
		require.Equal(t, "OrderPlaced", line.Metadata["event_type"])
		require.Equal(t, "order-42", line.Metadata[outbox.MetadataKey])

		stopRelay(t, cancel, done, stderr)

		// Exactly one line, and the published row is gone.
		require.Equal(t, 1, strings.Count(stdout.String(), "\n"), stdout.String())
		names, err := sqlstore.NewNames(env.Dialect, env.Schema, outbox.TablePrefixDefault)
		require.NoError(t, err)
		var n int
		require.NoError(t, env.DB.QueryRowContext(ctx, "SELECT count(*) FROM "+names.Outbox()).Scan(&n))
		require.Zero(t, n)

		// The logs are JSON lines on stderr.
		sc := bufio.NewScanner(strings.NewReader(stderr.String()))
		for sc.Scan() {
			require.True(t, json.Valid(sc.Bytes()), "log line %q", sc.Text())
		}
		require.Contains(t, stderr.String(), `"msg":"accord relay starting"`)
	})
}

// eventually checks cond every few milliseconds until it holds, failing t
// after testTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(testTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			require.FailNow(t, "timed out waiting for "+what)
		}
	}
}

// httpGet returns the status code and body of GET url.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// `accord relay --http-addr` serves Prometheus metrics, /healthz and
// /readyz while it runs, and stops serving once the relay stopped.
func TestRelayHTTP(t *testing.T) {
	t.Parallel()
	env := dbtest.SQLite(t)
	ctx := context.Background()
	ob, err := outbox.New(&outbox.Config{Dialect: env.Dialect})
	require.NoError(t, err)
	msg := outbox.NewMessage([]byte(`{"order_id":"42"}`))
	tx, err := env.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, ob.WriteTx(ctx, tx, outbox.Event{Topic: "orders.placed", Key: "order-42", Message: msg}))
	require.NoError(t, tx.Commit())

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stdout, stderr := newSyncBuffer(), newSyncBuffer()
	done := make(chan int, 1)
	go func() {
		done <- testApp(stdout, stderr, nil).run(runCtx, []string{"relay", "--database-url", env.URL, "--broker", "log",
			"--log-format", "json", "--poll-interval", "20ms", "--http-addr", "127.0.0.1:0"})
	}()

	// Port 0: the system chose the port, and the log tells which.
	var serving struct {
		Addr  string `json:"addr"`
		Paths string `json:"paths"`
	}
	require.NoError(t, json.Unmarshal([]byte(stderr.waitFor(t, `"msg":"accord relay serving HTTP"`, stdout)), &serving))
	require.Regexp(t, `^127\.0\.0\.1:\d+$`, serving.Addr)
	require.Equal(t, "/metrics /healthz /readyz", serving.Paths)
	base := "http://" + serving.Addr

	code, body := httpGet(t, base+"/healthz")
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, "ok\n", body)
	eventually(t, "/readyz to answer 200", func() bool {
		code, _ := httpGet(t, base+"/readyz")
		return code == http.StatusOK
	})
	stdout.waitFor(t, msg.UUID, stderr)

	var metrics string
	eventually(t, "the published event in /metrics", func() bool {
		code, metrics = httpGet(t, base+"/metrics")
		require.Equal(t, http.StatusOK, code, metrics)
		// The in-flight gauge is read at scrape time, the counter when the
		// delete is observed: wait for both.
		return strings.Contains(metrics, "\naccord_relay_deleted_rows_total 1\n") &&
			strings.Contains(metrics, "\naccord_relay_in_flight_rows 0\n")
	})
	for _, want := range []string{
		"\naccord_relay_published_messages_total{topic=\"orders.placed\"} 1\n",
		"\naccord_relay_publish_errors_total{topic=\"orders.placed\"} 0\n",
		"\naccord_relay_write_to_publish_seconds_count 1\n",
		"\naccord_relay_backlog_rows 0\n",
		"\naccord_relay_oldest_pending_age_seconds 0\n",
		"\naccord_relay_in_flight_rows 0\n",
		"\ngo_goroutines ",
		"\nprocess_cpu_seconds_total ",
		"\ngo_sql_max_open_connections{db_name=\"accord\"} 1\n",
	} {
		require.True(t, strings.Contains(metrics, want), "/metrics lacks %q", want)
	}

	stopRelay(t, cancel, done, stderr)
	// The server stopped with the relay.
	_, err = http.Get(base + "/healthz")
	require.Error(t, err)
}

// The handlers answer what the relay is doing: alive but not ready before
// Run, ready while it runs, not ready when the database does not answer
// or a stop was asked for, and neither once Run returned.
func TestRelayHTTP_Handlers(t *testing.T) {
	t.Parallel()
	env := dbtest.SQLite(t)
	logger := slog.New(slog.DiscardHandler)
	r, err := relay.New(env.DB, gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{}),
		&relay.Config{Dialect: env.Dialect, Logger: logger})
	require.NoError(t, err)
	closedDB, _, err := accord.OpenDB(env.URL)
	require.NoError(t, err)
	require.NoError(t, closedDB.Close())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := prometheus.NewRegistry()
	h := newRelayHTTP(ctx, r, env.DB, reg, reg, logger)
	dead := newRelayHTTP(ctx, r, closedDB, reg, nil, logger)
	get := func(h *relayHTTP, path string) string {
		rec := httptest.NewRecorder()
		h.srv.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return fmt.Sprintf("%d %s", rec.Code, strings.TrimSpace(rec.Body.String()))
	}

	require.Equal(t, "200 ok", get(h, "/healthz"))
	require.Equal(t, "503 relay not running yet (waiting for the database?)", get(h, "/readyz"))

	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()
	select {
	case <-r.Running():
	case err := <-errc:
		require.FailNow(t, "relay stopped at start", "%v", err)
	case <-time.After(testTimeout):
		require.FailNow(t, "relay did not start")
	}
	require.Equal(t, "200 ok", get(h, "/healthz"))
	require.Equal(t, "200 ok", get(h, "/readyz"))
	require.Equal(t, "503 database ping failed: sql: database is closed", get(dead, "/readyz"))
	require.Equal(t, "200 ok", get(dead, "/healthz"))
	require.True(t, strings.HasPrefix(get(h, "/metrics"), "200 "))
	rec := httptest.NewRecorder()
	h.srv.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/healthz", nil))
	require.Equal(t, http.StatusMethodNotAllowed, rec.Code)

	cancel()
	require.Equal(t, "503 relay stopping", get(h, "/readyz"))
	require.NoError(t, <-errc)
	h.stop()
	h.stop() // idempotent
	require.Equal(t, "503 relay stopped", get(h, "/healthz"))
	require.Equal(t, "503 relay stopped", get(h, "/readyz"))
}

// --http-addr off (here from the environment) runs the relay without the
// HTTP server; an address in use fails the command.
func TestRelayHTTP_OffAndInUse(t *testing.T) {
	t.Parallel()

	t.Run("Off", func(t *testing.T) {
		t.Parallel()
		runCtx, cancel := context.WithCancel(context.Background())
		defer cancel()
		stdout, stderr := newSyncBuffer(), newSyncBuffer()
		done := make(chan int, 1)
		go func() {
			done <- testApp(stdout, stderr, map[string]string{"ACCORD_HTTP_ADDR": "off"}).run(runCtx,
				[]string{"relay", "--database-url", dbtest.SQLite(t).URL})
		}()
		stderr.waitFor(t, "relay started", stdout)
		cancel()
		select {
		case code := <-done:
			require.Equal(t, exitOK, code, "stderr:\n%s", stderr.String())
		case <-time.After(testTimeout):
			require.FailNow(t, "relay did not stop")
		}
		require.NotContains(t, stderr.String(), "serving HTTP")
	})

	t.Run("InUse", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		res := runCLI(t, nil, "relay", "--database-url", dbtest.SQLite(t).URL, "--http-addr", ln.Addr().String())
		requireCode(t, exitFailure, res)
		require.Contains(t, res.stderr, "--http-addr "+ln.Addr().String()+": listen tcp")
		require.Contains(t, res.stderr, "address already in use (use --http-addr off to run without the HTTP server)")
	})
}
