package etcdstore

import (
	"context"
	"time"

	"google.golang.org/grpc/connectivity"
)

// Reachability, for /healthz, /readyz, `weft status` and the logs.
//
// The store is unreachable from the moment its connection to etcd drops,
// a probe of a quiet watch fails, or the watch breaks, until the
// connection is back, or a watch response or a probe succeeds. The
// dataplane does not depend on it: the daemon keeps serving what it has.
// A dropped connection is seen at once through gRPC's connectivity state
// (monitor): the etcd client hides it from the watch, which it resumes by
// itself.

// monitor follows the client connection's state until the client closes:
// a connection that was ready and is not any more (etcd stopped, a reset,
// keepalive timing out) makes the store unreachable, and, while a watch
// runs, counts as a watch interruption (the client re-establishes the
// stream); ready again makes it reachable.
func (s *Store) monitor(ctx context.Context) {
	cc := s.cli.ActiveConnection()
	wasReady := false
	for st := cc.GetState(); ; st = cc.GetState() {
		s.log.Debug("etcd connection", "state", st)
		switch st {
		case connectivity.Shutdown:
			return
		case connectivity.Ready:
			wasReady = true
			s.markUp()
		default:
			if wasReady {
				wasReady = false
				reason := ""
				if s.watching.Load() {
					reason = "interrupted"
				}
				s.markDown(reason, errConnectionLost{st})
			}
		}
		if !cc.WaitForStateChange(ctx, st) {
			return
		}
	}
}

type errConnectionLost struct{ state connectivity.State }

func (e errConnectionLost) Error() string {
	return "connection to etcd lost (" + e.state.String() + ")"
}

// markDown records that etcd is unreachable, from now unless it already
// was; reason, if set, counts a watch restart (OnWatchRestart).
func (s *Store) markDown(reason string, err error) {
	if reason != "" {
		s.restarted(reason)
	}
	if s.downSince.CompareAndSwap(0, time.Now().UnixNano()) {
		s.log.Warn("etcd unreachable; the dataplane stays as it is, retrying", "err", err)
	}
}

// answered records that etcd answered a call of the watch's (a watch
// response, a probe, a listing), if the connection is still up: a
// response can be read from the client's buffers after the connection
// dropped, and must not undo what the monitor just recorded.
func (s *Store) answered() {
	if s.cli.ActiveConnection().GetState() == connectivity.Ready {
		s.markUp()
	}
}

// markUp records that etcd answers.
func (s *Store) markUp() {
	if n := s.downSince.Swap(0); n != 0 {
		s.log.Info("etcd reachable again", "after", time.Since(time.Unix(0, n)).Round(time.Millisecond))
	}
}

func (s *Store) restarted(reason string) {
	if s.onRestart != nil {
		s.onRestart(reason)
	}
}

// WatchDownSince returns since when etcd has been unreachable, or the zero
// time while it answers. Health checks and the status report use it.
func (s *Store) WatchDownSince() time.Time {
	if n := s.downSince.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}
