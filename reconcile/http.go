package reconcile

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Handler serves side over HTTP, so a producer computes its digests next to
// its own database and only digests (and the keys of mismatched buckets)
// cross the network:
//
//	GET {base}/digests?buckets=N             → [{"bucket":0,"count":12,"hash":...}, ...]
//	GET {base}/versions?buckets=N&which=1,7  → {"key":version, ...}
//
// Bad parameters get a 400 with a JSON error.
func Handler(side Side) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /digests", func(w http.ResponseWriter, r *http.Request) {
		n, err := bucketsParam(r)
		if err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		d, err := side.Digests(r.Context(), n)
		if err != nil {
			httpError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, d)
	})
	mux.HandleFunc("GET /versions", func(w http.ResponseWriter, r *http.Request) {
		n, err := bucketsParam(r)
		if err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		var which []int
		for _, part := range strings.Split(r.URL.Query().Get("which"), ",") {
			if part == "" {
				continue
			}
			b, err := strconv.Atoi(part)
			if err != nil || b < 0 || b >= n {
				httpError(w, http.StatusBadRequest, fmt.Errorf("which: %q is not a bucket between 0 and %d", part, n-1))
				return
			}
			which = append(which, b)
		}
		v, err := side.Versions(r.Context(), n, which)
		if err != nil {
			httpError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, v)
	})
	return mux
}

func bucketsParam(r *http.Request) (int, error) {
	n, err := strconv.Atoi(r.URL.Query().Get("buckets"))
	if err != nil || n < 1 || n > BucketsMax {
		return 0, fmt.Errorf("buckets: %q is not a number between 1 and %d", r.URL.Query().Get("buckets"), BucketsMax)
	}
	return n, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func httpError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

// HTTPSide is a Side served by [Handler] at BaseURL.
type HTTPSide struct {
	// BaseURL is where Handler is mounted, for example
	// "http://users:8080/reconcile".
	BaseURL string
	// Client defaults to http.DefaultClient.
	Client *http.Client
}

// Digests implements Side.
func (h HTTPSide) Digests(ctx context.Context, buckets int) ([]Digest, error) {
	var out []Digest
	err := h.get(ctx, "/digests", url.Values{"buckets": {strconv.Itoa(buckets)}}, &out)
	return out, err
}

// Versions implements Side.
func (h HTTPSide) Versions(ctx context.Context, buckets int, which []int) (map[string]int64, error) {
	parts := make([]string, len(which))
	for i, b := range which {
		parts[i] = strconv.Itoa(b)
	}
	out := map[string]int64{}
	err := h.get(ctx, "/versions", url.Values{"buckets": {strconv.Itoa(buckets)}, "which": {strings.Join(parts, ",")}}, &out)
	return out, err
}

func (h HTTPSide) get(ctx context.Context, path string, q url.Values, into any) error {
	client := h.Client
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(h.BaseURL, "/")+path+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return json.NewDecoder(resp.Body).Decode(into)
}
