package relay

import (
	"context"
	"database/sql/driver"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/stdlib"

	"github.com/accordgo/accord/internal/service"
)

// listen holds one connection of the pool in LISTEN on the outbox channel
// and wakes the reader on every notification, reconnecting with backoff.
// The connection is discarded afterwards, never returned to the pool.
func (r *Relay) listen(ctx context.Context) {
	channel := `"` + strings.ReplaceAll(r.names.Channel(), `"`, `""`) + `"`
	for attempt := 0; ctx.Err() == nil; attempt++ {
		conn, err := r.db.Conn(ctx)
		if err == nil {
			err = conn.Raw(func(dc any) error {
				sc, ok := dc.(*stdlib.Conn)
				if !ok {
					return errNoListen{fmt.Sprintf("%T", dc)}
				}
				pc := sc.Conn()
				if _, err := pc.Exec(ctx, "LISTEN "+channel); err != nil {
					return fmt.Errorf("LISTEN: %w", err)
				}
				r.log.Debug("relay listening for commits", "channel", r.names.Channel())
				attempt = 0
				r.Wake() // rows may have committed before LISTEN took effect
				for {
					if _, err := pc.WaitForNotification(ctx); err != nil {
						return err
					}
					r.Wake()
				}
			})
			// The connection was in LISTEN: never hand it back to the pool.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
			_ = conn.Close()
		}
		if ctx.Err() != nil {
			return
		}
		if nl, ok := err.(errNoListen); ok {
			r.log.Warn("relay cannot LISTEN with this database driver; polling only", "driver_conn", nl.typ, "poll_interval", r.cfg.PollInterval)
			return
		}
		r.log.Warn("relay lost its LISTEN connection; polling until it is back", "error", err, "attempt", attempt+1)
		if !service.Sleep(ctx, r.backoff(attempt)) {
			return
		}
	}
}

type errNoListen struct{ typ string }

func (e errNoListen) Error() string { return "driver connection " + e.typ + " does not support LISTEN" }
