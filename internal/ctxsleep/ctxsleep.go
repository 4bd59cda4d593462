// Package ctxsleep is time.Sleep that a context can cut short: the
// daemon's retry loops, the Kubernetes store's backoff and the bench's
// pacing all wait this way, and must stop waiting when they are stopped.
package ctxsleep

import (
	"context"
	"time"
)

// For waits d, or until ctx ends; it returns ctx's error in that case.
func For(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
