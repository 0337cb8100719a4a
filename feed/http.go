package feed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Handler returns the feed's HTTP endpoint. Mount it under any path; it
// serves every request it gets:
//
//	GET <path>?after=<cursor>&limit=<n>&wait=<duration>
//
// The query parameters are:
//
//   - after: the cursor to read after; empty or absent reads from the start
//     of the feed (the oldest retained event).
//   - limit: the most events to return, 1 or more; ReadLimitDefault (100)
//     when absent, capped at ReadLimitMax (1000).
//   - wait: how long to long-poll when there is no event after the cursor,
//     as a Go duration ("30s", "500ms") or whole seconds ("30"); 0 when
//     absent, capped at WaitMax (60 s). Make the server's WriteTimeout and
//     any proxy's read timeout longer than the waits clients ask for.
//
// A 200 answer is a JSON [Page]:
//
//	{"events":[{"position":1,"id":"...","topic":"...","key":"...","version":3,
//	            "payload":"<base64>","metadata":{"k":"v"},"created_at":"<RFC 3339>"}],
//	 "next":"<cursor>","more":false}
//
// Errors are JSON {"error":"<message>","code":"<code>"}: 400 for a
// malformed cursor, limit or wait (codes malformed_cursor, malformed_limit,
// malformed_wait), 409 cursor_from_future, 410 cursor_expired, 405 for
// methods other than GET and HEAD, 500 internal (details are logged, not
// sent).
func (s *Source) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func (s *Source) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "use GET", Code: CodeMethodNotAllowed})
		return
	}
	q := r.URL.Query()
	limit := ReadLimitDefault
	if v := q.Get("limit"); q.Has("limit") {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeJSON(w, http.StatusBadRequest, errorBody{Error: fmt.Sprintf("limit %q: want a whole number of 1 or more", truncate(v, 40)), Code: CodeMalformedLimit})
			return
		}
		limit = min(n, ReadLimitMax)
	}
	var wait time.Duration
	if v := q.Get("wait"); q.Has("wait") {
		d, err := parseWait(v)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody{Error: err.Error(), Code: CodeMalformedWait})
			return
		}
		wait = min(d, WaitMax)
	}
	page, err := s.Read(r.Context(), q.Get("after"), limit, wait)
	if err != nil {
		status, code, msg := http.StatusInternalServerError, CodeInternal, "internal error"
		switch {
		case errors.Is(err, ErrMalformedCursor):
			status, code, msg = http.StatusBadRequest, CodeMalformedCursor, err.Error()
		case errors.Is(err, ErrCursorFromFuture):
			status, code, msg = http.StatusConflict, CodeCursorFromFuture, err.Error()
		case errors.Is(err, ErrCursorExpired):
			status, code, msg = http.StatusGone, CodeCursorExpired, err.Error()
		case r.Context().Err() != nil:
			// The client went away (or the server is shutting down).
			status, code, msg = http.StatusServiceUnavailable, CodeUnavailable, "request cancelled"
		default:
			s.log.ErrorContext(r.Context(), "feed read failed", "error", err)
		}
		writeJSON(w, status, errorBody{Error: msg, Code: code})
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func parseWait(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n > int64(WaitMax/time.Second) {
			n = int64(WaitMax / time.Second)
		}
		d = time.Duration(n) * time.Second
	} else if d, err = time.ParseDuration(v); err != nil {
		return 0, fmt.Errorf("wait %q: want a duration such as 30s or 500ms, or whole seconds", truncate(v, 40))
	}
	if d < 0 {
		return 0, fmt.Errorf("wait %q: must not be negative", truncate(v, 40))
	}
	return d, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Fetcher reads pages of a feed after a cursor: a [Source] reads its
// database directly, a [Client] reads a feed endpoint over HTTP. Read
// returns ErrMalformedCursor, ErrCursorFromFuture or ErrCursorExpired
// (possibly wrapped) when the cursor cannot be used; any other error is
// taken as transient by a [Puller].
type Fetcher interface {
	Read(ctx context.Context, cursor string, limit int, wait time.Duration) (Page, error)
}

// requestTimeoutMargin is added to a read's wait to bound one HTTP request.
const requestTimeoutMargin = 30 * time.Second

// Client reads a feed endpoint ([Source.Handler]) over HTTP. It is a
// [Fetcher]. Safe for concurrent use.
type Client struct {
	base *url.URL
	hc   *http.Client
}

var _ Fetcher = (*Client)(nil)

// NewHTTPFetcher returns a Client for the feed endpoint at baseURL (for
// example "http://orders.internal/feed"; query parameters in it are kept).
// hc nil means http.DefaultClient. Each request is bounded by its wait plus
// 30 s; an hc.Timeout must be longer than the longest wait asked for.
func NewHTTPFetcher(baseURL string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("%w: base URL %q: %v", ErrInvalidConfig, baseURL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: base URL %q: want http:// or https:// with a host", ErrInvalidConfig, baseURL)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: u, hc: hc}, nil
}

// Read fetches the events after cursor (see [Source.Read] for the meaning
// of the arguments). Error answers come back as a *ServerError, which
// errors.Is matches against the cursor sentinels; network errors are
// returned as they are.
func (c *Client) Read(ctx context.Context, cursor string, limit int, wait time.Duration) (Page, error) {
	u := *c.base
	q := u.Query()
	if cursor != "" {
		q.Set("after", cursor)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	wait = min(max(wait, 0), WaitMax)
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, wait+requestTimeoutMargin)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return Page{}, fmt.Errorf("accord feed: build request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return Page{}, fmt.Errorf("accord feed: fetch %s: %w", c.base.Redacted(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		se := &ServerError{StatusCode: resp.StatusCode}
		var eb errorBody
		if json.Unmarshal(body, &eb) == nil && eb.Code != "" {
			se.Code, se.Message = eb.Code, eb.Error
		} else {
			se.Message = truncate(strings.TrimSpace(string(body)), 200)
		}
		return Page{}, se
	}
	var page Page
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		return Page{}, fmt.Errorf("accord feed: decode page from %s: %w", c.base.Redacted(), err)
	}
	if page.Events == nil {
		page.Events = []Event{}
	}
	return page, nil
}
