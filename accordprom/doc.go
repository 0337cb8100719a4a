// Package accordprom exports Accord's metrics to Prometheus. It is the
// only Accord package that imports github.com/prometheus/client_golang:
// the core packages report through small observer interfaces
// (relay.Observer, inbox.Observer, feed.Observer, replica.Observer), and
// this package implements them.
//
// Each constructor registers its metrics with the given
// prometheus.Registerer and returns an observer to put in the component's
// Config:
//
//	reg := prometheus.NewRegistry()
//	m, err := accordprom.NewRelayMetrics(reg, nil)
//	if err != nil { ... }
//	r, err := relay.New(db, publisher, &relay.Config{Dialect: accord.Postgres, Observer: m})
//	if err != nil { ... }
//	if err := m.Track(r); err != nil { ... } // backlog gauges, read at each scrape
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// Every metric is named accord_<component>_..., and docs/operations.md
// lists them all with the alerts we suggest. Metrics have no instance
// label: to run two relays (or two sets of anything) in one process,
// register each set through prometheus.WrapRegistererWith with a label
// that tells them apart, since registering the same metric names twice in
// one registry fails.
//
// Label cardinality: consumer, feed and replica names are a handful per
// process. Topics can be many (a topic per tenant, say): the relay's
// counters carry a topic label unless RelayMetricsOpts.DisableTopicLabel
// is set. Histograms never carry the topic.
//
// The API is not stable yet.
package accordprom
