package bench

import (
	"context"
	stdsql "database/sql"
	"fmt"
	"net/url"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/accordgo/accord"
)

// forwarderTopic is watermill's default forwarder topic; its table is
// "watermill_forwarder_topic".
const forwarderTopic = "forwarder_topic"

// forwarderPublishBatch is the number of messages per Publish call (one
// INSERT statement) when seeding, and forwarderTxBatches the Publish calls
// per transaction.
const (
	forwarderPublishBatch = 1000
	forwarderTxBatches    = 5
)

// forwarderDrain writes n events through watermill's forwarder publisher
// (watermill-sql v4, default PostgreSQL schema and offsets adapter) and
// times one forwarder, in its default configuration, forwarding them into
// the destination (one publisher, like one relay). The watermill tables live in the run's schema: the forwarder's pool
// has that schema as its search_path, so the table names are watermill's
// defaults.
func (r *runner) forwarderDrain(ctx context.Context, n int) (out phaseOutcome, err error) {
	fdb, err := r.openWithSearchPath()
	if err != nil {
		return out, err
	}
	defer fdb.Close()
	logger := watermill.NopLogger{}
	sub, err := wsql.NewSubscriber(wsql.BeginnerFromStdSQL(fdb), wsql.SubscriberConfig{
		SchemaAdapter:  wsql.DefaultPostgreSQLSchema{},
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
	}, logger)
	if err != nil {
		return out, fmt.Errorf("accord bench: watermill subscriber: %w", err)
	}
	defer sub.Close()
	if err := sub.SubscribeInitialize(forwarderTopic); err != nil {
		return out, fmt.Errorf("accord bench: create watermill tables: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		// Leave nothing for autovacuum to chew on during the next phase.
		_, _ = r.db.ExecContext(dctx, `DROP TABLE IF EXISTS "`+r.schema+`"."watermill_`+forwarderTopic+`", "`+r.schema+`"."watermill_offsets_`+forwarderTopic+`"`)
	}()

	// Subscribed before anything is written to the topic.
	d, err := r.newDestination(ctx, "forwarder", n, true)
	if err != nil {
		return out, err
	}
	defer func() {
		if cerr := d.close(ctx); cerr != nil && err == nil {
			err = cerr
		}
	}()
	dest, err := d.publisher(ctx)
	if err != nil {
		return out, err
	}

	r.logf("forwarder (watermill): writing %d events through forwarder.Publisher into %s.watermill_%s", n, r.schema, forwarderTopic)
	seedStart := time.Now()
	ids := make([]string, n)
	msgs := make([]*message.Message, 0, forwarderPublishBatch)
	for start := 0; start < n; {
		tx, err := fdb.BeginTx(ctx, nil)
		if err != nil {
			return out, fmt.Errorf("accord bench: forwarder seed: %w", err)
		}
		sqlPub, err := wsql.NewPublisher(wsql.TxFromStdSQL(tx), wsql.PublisherConfig{SchemaAdapter: wsql.DefaultPostgreSQLSchema{}}, logger)
		if err != nil {
			_ = tx.Rollback()
			return out, fmt.Errorf("accord bench: watermill publisher: %w", err)
		}
		pub := forwarder.NewPublisher(sqlPub, forwarder.PublisherConfig{})
		for b := 0; b < forwarderTxBatches && start < n; b++ {
			msgs = msgs[:0]
			for i := start; i < min(start+forwarderPublishBatch, n); i++ {
				_, msg := newEvent(i)
				ids[i] = msg.UUID
				msgs = append(msgs, msg)
			}
			if err := pub.Publish(d.topic, msgs...); err != nil {
				_ = tx.Rollback()
				return out, fmt.Errorf("accord bench: forwarder seed: %w", err)
			}
			start += len(msgs)
		}
		if err := tx.Commit(); err != nil {
			return out, fmt.Errorf("accord bench: forwarder seed: %w", err)
		}
	}
	table := `"` + r.schema + `"."watermill_` + forwarderTopic + `"`
	if _, err := r.db.ExecContext(ctx, "ANALYZE "+table); err != nil {
		return out, fmt.Errorf("accord bench: analyze: %w", err)
	}
	if err := r.db.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&out.backlog); err != nil {
		return out, fmt.Errorf("accord bench: count forwarder backlog: %w", err)
	}
	out.seed = time.Since(seedStart)
	r.logf("forwarder (watermill): wrote %d events in %.2f s (%.0f events/s); starting the forwarder", out.backlog, out.seed.Seconds(), float64(out.backlog)/out.seed.Seconds())

	fwd, err := forwarder.NewForwarder(sub, dest, logger, forwarder.Config{})
	if err != nil {
		return out, fmt.Errorf("accord bench: forwarder: %w", err)
	}
	start := r.since()
	bg := goBackground(func() error { return fwd.Run(ctx) })
	defer func() {
		_ = fwd.Close()
		<-bg.done
	}()
	if err := r.waitSink(ctx, d.sink, "forwarder (watermill)", append([]*background{bg}, d.stops()...)...); err != nil {
		return out, err
	}
	// watermill-sql's default schema never deletes rows, so the forwarder is
	// done when the last event arrived.
	out.elapsed = time.Duration(d.sink.doneAt.Load() - start)
	if err := fwd.Close(); err != nil {
		return out, fmt.Errorf("accord bench: close forwarder: %w", err)
	}
	<-bg.done
	out.check = verify(d.sink.receipts(), ids, nil)
	r.logf("forwarder (watermill): %d events in %.3f s = %.0f events/s (lost %d, duplicates %d, order violations %d, unexpected %d)",
		out.backlog, out.elapsed.Seconds(), float64(out.backlog)/out.elapsed.Seconds(),
		out.check.Lost, out.check.Duplicates, out.check.OrderViolations, out.check.Unexpected)
	return out, nil
}

// since returns the time since the run's clock base in nanoseconds.
func (r *runner) since() int64 { return int64(time.Since(r.base)) }

// openWithSearchPath opens a second pool on the same database whose
// search_path is the run's schema.
func (r *runner) openWithSearchPath() (*stdsql.DB, error) {
	u, err := url.Parse(r.opts.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("accord bench: parse database URL: %w", err)
	}
	q := u.Query()
	q.Set("search_path", r.schema)
	u.RawQuery = q.Encode()
	db, _, err := accord.OpenDB(u.String())
	if err != nil {
		return nil, fmt.Errorf("accord bench: %w", err)
	}
	db.SetMaxOpenConns(64)
	db.SetMaxIdleConns(64)
	return db, nil
}
