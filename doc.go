// Package accord keeps data consistent across microservices that each own
// their database, without distributed locks.
//
// Accord is a set of packages that work together:
//
//   - [github.com/accordgo/accord/outbox] writes events into an outbox table in
//     the caller's own database transaction (database/sql or pgx), so business
//     state and the events that describe it commit or roll back together.
//   - [github.com/accordgo/accord/relay] reads committed outbox rows and publishes
//     them through any watermill message.Publisher (NATS JetStream, RabbitMQ,
//     Kafka, SQL, in-process), at least once and in order per partition key.
//   - [github.com/accordgo/accord/migrate] owns the versioned, embedded schema
//     migrations, with a Go API and the `accord migrate` command.
//   - [github.com/accordgo/accord/saga] (coming) drives operations that span
//     services, with compensation on failure.
//
// This root package only holds what every other package shares: the SQL
// [Dialect] and the helpers that open a database from a URL.
//
// The API is not stable yet: it may change between minor versions until 1.0.
package accord
