package broker

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
)

// ErrPublisherClosed is returned by LogPublisher.Publish after Close.
var ErrPublisherClosed = errors.New("accord broker: publisher closed")

// LogLine is the JSON object LogPublisher writes for each message, one per
// line. Exactly one of Payload and PayloadBase64 is set: Payload when the
// payload is valid UTF-8, PayloadBase64 (standard encoding) otherwise.
type LogLine struct {
	UUID          string            `json:"uuid"`
	Topic         string            `json:"topic"`
	Metadata      map[string]string `json:"metadata"`
	Payload       *string           `json:"payload,omitempty"`
	PayloadBase64 *string           `json:"payload_base64,omitempty"`
}

// LogPublisher is a message.Publisher that writes each message as one JSON
// line (see LogLine) to a writer. It is safe for concurrent use; each line
// is written with one Write call.
type LogPublisher struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
}

// NewLogPublisher returns a LogPublisher writing to w.
func NewLogPublisher(w io.Writer) *LogPublisher { return &LogPublisher{w: w} }

// Publish writes one line per message, in order, and returns the first
// write error.
func (p *LogPublisher) Publish(topic string, msgs ...*message.Message) error {
	lines := make([][]byte, 0, len(msgs))
	for _, m := range msgs {
		line := LogLine{UUID: m.UUID, Topic: topic, Metadata: map[string]string{}}
		for k, v := range m.Metadata {
			line.Metadata[k] = v
		}
		if utf8.Valid(m.Payload) {
			s := string(m.Payload)
			line.Payload = &s
		} else {
			s := base64.StdEncoding.EncodeToString(m.Payload)
			line.PayloadBase64 = &s
		}
		b, err := json.Marshal(line)
		if err != nil {
			return fmt.Errorf("accord broker: encode message %s: %w", m.UUID, err)
		}
		lines = append(lines, append(b, '\n'))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrPublisherClosed
	}
	for _, line := range lines {
		if _, err := p.w.Write(line); err != nil {
			return fmt.Errorf("accord broker: write log line: %w", err)
		}
	}
	return nil
}

// Close makes later Publish calls fail. It does not close the writer and is
// idempotent.
func (p *LogPublisher) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	return nil
}
