package cli

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/reconcile"
)

func (a *app) newSyncCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "sync", Short: "Keep replicas in sync: reconcile a replica with its source"}
	cmd.AddCommand(a.newSyncReconcileCmd())
	return cmd
}

// sideFlags locate one side of a reconciliation.
type sideFlags struct {
	url, schema, table, key, version, filter string
}

func (f *sideFlags) register(cmd *cobra.Command, side, env string) {
	fs := cmd.Flags()
	fs.StringVar(&f.url, side+"-url", "", side+" database URL (postgres://, mysql://, sqlite://)")
	bindEnv(cmd, side+"-url", "ACCORD_"+env+"_URL")
	fs.StringVar(&f.schema, side+"-schema", "", side+" schema (PostgreSQL) or database (MySQL) of the table")
	fs.StringVar(&f.table, side+"-table", "", side+" table (required)")
	fs.StringVar(&f.key, side+"-key", "id", side+" key column")
	fs.StringVar(&f.version, side+"-version", "version", side+" version column (an integer)")
	fs.StringVar(&f.filter, side+"-filter", "", side+" row filter column=value (for example replica=users)")
}

func (f *sideFlags) open(name string) (*reconcile.SQLSide, *sql.DB, accord.Dialect, error) {
	if f.url == "" || f.table == "" {
		return nil, nil, "", usageErrorf("--%s-url and --%s-table are required", name, name)
	}
	db, d, err := accord.OpenDB(f.url)
	if err != nil {
		return nil, nil, "", usageError(err)
	}
	cfg := reconcile.SQLSideConfig{Dialect: d, Schema: f.schema, Table: f.table, KeyColumn: f.key, VersionColumn: f.version}
	if f.filter != "" {
		col, val, ok := strings.Cut(f.filter, "=")
		if !ok {
			db.Close()
			return nil, nil, "", usageErrorf("--%s-filter %q: want column=value", name, f.filter)
		}
		cfg.FilterColumn, cfg.FilterValue = col, val
	}
	side, err := reconcile.NewSQLSide(db, cfg)
	if err != nil {
		db.Close()
		return nil, nil, "", usageError(fmt.Errorf("--%s-*: %w", name, err))
	}
	return side, db, d, nil
}

func (a *app) newSyncReconcileCmd() *cobra.Command {
	var src, rep sideFlags
	var buckets int
	var repair, asJSON bool
	var topic, prefix string
	cmd := &cobra.Command{
		Use:   "reconcile",
		Short: "Compare a replica with its source by (key, version) and report or repair the drift",
		Long: `Compare a producer's table (the source) with a consumer's replica of it. Each
side is hashed into --buckets digests of (key, version) pairs; only buckets
whose digests differ are compared key by key. The drift is printed: missing
(in the source only), stale (replica behind), ahead (replica ahead) and extra
(in the replica only).

With --repair, every drifted key is re-emitted as a snapshot event (the source
row as a JSON object, Key = the key, Version = its version; a tombstone for
extra keys) into the source database's outbox, on --topic: the relay and the
consumer then bring the replica back in line. The source database must be
migrated (accord migrate up).

Exit codes: 0 when in sync (or repaired), 3 when drift was found and not
repaired, 1 on failure, 2 for invalid flags.

` + settingsHelp,
		Example: `  accord sync reconcile \
    --source-url postgres://users@db/users --source-table users \
    --replica-url postgres://orders@db/orders --replica-table user_profiles \
    --repair --topic users.snapshot`,
		Args: cobra.NoArgs,
	}
	src.register(cmd, "source", "SOURCE")
	rep.register(cmd, "replica", "REPLICA")
	fs := cmd.Flags()
	fs.IntVar(&buckets, "buckets", reconcile.BucketsDefault, "digest buckets")
	fs.BoolVar(&repair, "repair", false, "re-emit snapshots of drifted keys through the source's outbox")
	fs.StringVar(&topic, "topic", "", "topic of the snapshot events (required with --repair)")
	fs.StringVar(&prefix, "table-prefix", outbox.TablePrefixDefault, "prefix of Accord's tables in the source database")
	fs.BoolVar(&asJSON, "json", false, "print the report as one JSON object")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if repair && topic == "" {
			return usageErrorf("--repair needs --topic")
		}
		source, sdb, sd, err := src.open("source")
		if err != nil {
			return err
		}
		defer sdb.Close()
		replica, rdb, _, err := rep.open("replica")
		if err != nil {
			return err
		}
		defer rdb.Close()
		ctx := cmd.Context()
		report, err := reconcile.Run(ctx, source, replica, &reconcile.Options{Buckets: buckets})
		if err != nil {
			return err
		}
		a.printReport(report, asJSON)
		if report.InSync() {
			return nil
		}
		if !repair {
			return &exitError{code: exitDrift, err: fmt.Errorf("drift found in %d keys", len(report.DriftedKeys()))}
		}
		ob, err := outbox.New(&outbox.Config{Dialect: sd, Schema: src.schema, TablePrefix: prefix})
		if err != nil {
			return usageError(err)
		}
		emitter := &reconcile.SnapshotEmitter{DB: sdb, Outbox: ob, Topic: topic,
			Load: func(ctx context.Context, tx *sql.Tx, key string) ([]byte, int64, bool, error) {
				return source.RowJSON(ctx, tx, key)
			}}
		keys := report.DriftedKeys()
		if err := emitter.Repair(ctx, keys); err != nil {
			return err
		}
		fmt.Fprintf(a.stderr, "repair: %d snapshot events written to the source outbox on topic %s\n", len(keys), topic)
		return nil
	}
	return cmd
}

// exitDrift is the exit code of a reconciliation that found drift.
const exitDrift = 3

func (a *app) printReport(r *reconcile.Report, asJSON bool) {
	if asJSON {
		b, _ := json.Marshal(r)
		fmt.Fprintln(a.stdout, string(b))
		return
	}
	fmt.Fprintf(a.stdout, "source keys: %d, replica keys: %d, buckets: %d, mismatched buckets: %d, keys compared: %d\n",
		r.SourceKeys, r.ReplicaKeys, r.Buckets, r.MismatchedBuckets, r.KeysCompared)
	if r.InSync() {
		fmt.Fprintln(a.stdout, "in sync")
		return
	}
	for _, set := range []struct {
		name string
		ds   []reconcile.KeyDrift
	}{{"missing", r.Missing}, {"stale", r.Stale}, {"ahead", r.Ahead}, {"extra", r.Extra}} {
		for _, d := range set.ds {
			fmt.Fprintf(a.stdout, "%-8s %s (source %d, replica %d)\n", set.name, d.Key, d.SourceVersion, d.ReplicaVersion)
		}
	}
}
