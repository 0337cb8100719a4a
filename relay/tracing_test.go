package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/outbox"
	"github.com/accordgo/accord/relay"
)

// The trace context of the writing transaction travels in the message
// metadata, and the relay's publish span links to it.
func TestPublishSpanLinksToWriter(t *testing.T) {
	t.Parallel()
	env := dbtest.PostgresSchema(t)
	ob := newOutbox(t, env)
	exporter := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
	defer tp.Shutdown(context.Background())

	ctx, span := tp.Tracer("test").Start(context.Background(), "place order")
	tx, err := env.DB.BeginTx(ctx, nil)
	require.NoError(t, err)
	msg := outbox.NewMessage([]byte("x"))
	require.NoError(t, ob.WriteTx(ctx, tx, outbox.Event{Topic: "orders", Key: "o1", Message: msg}))
	require.NoError(t, tx.Commit())
	span.End()
	writer := span.SpanContext()

	sink := newMemSink()
	startRelay(t, env, sink, &relay.Config{TracerProvider: tp})
	waitFor(t, 10*time.Second, "the event", func() bool { return sink.has(msg.UUID) })
	got := sink.snapshot()[0]
	require.Contains(t, got.Metadata.Get("traceparent"), writer.TraceID().String())

	waitFor(t, 10*time.Second, "the publish span", func() bool {
		for _, s := range exporter.GetSpans() {
			if s.Name == "accord.relay publish orders" {
				return true
			}
		}
		return false
	})
	for _, s := range exporter.GetSpans() {
		if s.Name != "accord.relay publish orders" {
			continue
		}
		require.Len(t, s.Links, 1)
		require.Equal(t, writer.TraceID(), s.Links[0].SpanContext.TraceID())
		require.Equal(t, writer.SpanID(), s.Links[0].SpanContext.SpanID())
	}
}
