package relay

import (
	"bytes"
	"context"
	"encoding/json"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

const tracerName = "github.com/accordgo/accord/relay"

var traceContext = propagation.TraceContext{}

// startPublishSpan starts the span of one publish call, linked to the trace
// context of every event's writing transaction.
func (r *Relay) startPublishSpan(ctx context.Context, group []item, attempt int) (context.Context, trace.Span) {
	tracer := r.tracer
	links := make([]trace.Link, 0, len(group))
	for _, it := range group {
		if sc := writerSpanContext(it.row.Metadata); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	return tracer.Start(ctx, "accord.relay publish "+group[0].row.Topic,
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithLinks(links...),
		trace.WithAttributes(
			attribute.String("messaging.destination.name", group[0].row.Topic),
			attribute.String("messaging.operation.type", "publish"),
			attribute.Int("messaging.batch.message_count", len(group)),
			attribute.Int("accord.relay.attempt", attempt+1),
		))
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// writerSpanContext extracts the W3C trace context the outbox stored in a
// row's metadata.
func writerSpanContext(metadata []byte) trace.SpanContext {
	if !bytes.Contains(metadata, []byte(`"traceparent"`)) {
		return trace.SpanContext{}
	}
	var md map[string]string
	if json.Unmarshal(metadata, &md) != nil || md["traceparent"] == "" {
		return trace.SpanContext{}
	}
	ctx := traceContext.Extract(context.Background(), propagation.MapCarrier(md))
	return trace.SpanContextFromContext(ctx)
}
