// Package saga will drive operations that span services: steps defined in
// Go code, each with a compensating step that runs, in reverse order, when a
// later step fails. Sagas will be durable (state in the service's own
// database, next to the outbox), crash-safe, with timers, retries and admin
// actions (list, retry, skip).
//
// Nothing is implemented yet: this package only reserves the name and states
// the plan. See docs/concepts.md.
package saga
