package kubestore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/weft-net/weft/internal/ctxsleep"
	"github.com/weft-net/weft/internal/lease"
)

// Retrying. A request that met nothing (connection refused or reset, the
// server or a load balancer closing it without an answer, a timeout) is
// retried every reconnectEvery, however long the API server has been
// gone: such an attempt costs a server that is down nothing, and a node
// added the moment it answers again is installed within about
// reconnectEvery (docs/RELIABILITY.md, "kube-apiserver restart"; a reflector
// backs off to 30 s). A request the server answered with an error (429,
// 5xx, a refused TLS handshake, a forbidden list) backs off from minBackoff
// doubling to maxBackoff: the server is up and retrying costs it work.
const (
	reconnectEvery = 250 * time.Millisecond
	minBackoff     = 200 * time.Millisecond
	maxBackoff     = 10 * time.Second
	// maxBatch bounds one batch taken from a busy watch stream, so a storm
	// of node changes still reaches the daemon in steps.
	maxBatch = 1000
)

// retryAfter returns the pause before the next attempt after err, and the
// backoff to keep for the one after.
func retryAfter(err error, backoff time.Duration) (wait, next time.Duration) {
	if unreachable(err) {
		// ±20%, so that nodes that lost the server together do not come
		// back in lockstep.
		return reconnectEvery - reconnectEvery/5 + rand.N(2*reconnectEvery/5+1), backoff
	}
	return backoff, min(2*backoff, maxBackoff)
}

// unreachable reports whether err says the request met nothing rather than
// a server answering.
func unreachable(err error) bool {
	var cv *tls.CertificateVerificationError
	var op *net.OpError
	switch {
	case err == nil:
		return false
	case errors.As(err, &cv):
		return false // a TLS server that answered: its certificate is wrong
	case errors.As(err, &op) && op.Op == "remote error":
		return false // a TLS alert: the server refused our handshake
	case errors.Is(err, errEmptyWatch), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Watch sends a Snapshot of every managed node's lease, then batches of
// changes, until ctx ends. After a dropped watch it resumes from the last
// resourceVersion it saw; when the server has compacted that history away
// (410 Gone) it lists again and sends a new Snapshot.
func (s *Store) Watch(ctx context.Context, out chan<- lease.Batch) error {
	w := &watchState{s: s, fam: s.families(), out: out, nodes: map[string]entry{}}
	backoff := minBackoff
	var wait time.Duration
	for {
		rv, err := w.list(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			quiet := s.downFor() > 0 && unreachable(err)
			s.setDown(true)
			s.restarted("list_failed")
			wait, backoff = retryAfter(err, backoff)
			s.logFailure(quiet, "listing nodes failed, retrying", "err", err, "in", wait)
			if err := ctxsleep.For(ctx, wait); err != nil {
				return err
			}
			continue
		}
		backoff = minBackoff
		// Resume from the last resourceVersion until the server no longer
		// has the history; a list is a full snapshot, a resume is not.
		// (A restarted API server's watch cache starts at its own start,
		// so a resume across a restart of the only server is answered 410
		// and costs one list; with several servers behind the address the
		// watch resumes on another.)
		for {
			var progressed bool
			rv, progressed, err = w.watch(ctx, rv)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if isGone(err) {
				s.restarted("compacted")
				s.log.Info("node watch history compacted away, listing again", "resource_version", rv)
				break
			}
			if progressed {
				backoff = minBackoff
			}
			if !errors.As(err, new(notOpened)) {
				s.restarted("interrupted") // counted once per stream, not per attempt
			}
			wait = minBackoff // the server ended the stream: resume soon
			if err != nil {
				quiet := s.downFor() > 0 && unreachable(err)
				s.setDown(true)
				wait, backoff = retryAfter(err, backoff)
				s.logFailure(quiet, "node watch failed, resuming", "err", err, "resource_version", rv, "in", wait)
			}
			if err := ctxsleep.For(ctx, wait); err != nil {
				return err
			}
		}
	}
}

// errEmptyWatch is a watch that ended before anything arrived. A server
// sends bookmarks, so a watch it serves has progressed by the time it
// ends; an empty one is what client-go makes of a request that met an EOF.
var errEmptyWatch = errors.New("watch ended before anything arrived: the API server is unreachable, or going away")

// notOpened is a watch that could not be opened.
type notOpened struct{ error }

func (e notOpened) Unwrap() error { return e.error }

// logFailure logs a failed attempt: a warning, or at debug level when
// quiet (one more attempt that met nothing while the server is known to
// be gone, which would otherwise log four lines a second).
func (s *Store) logFailure(quiet bool, msg string, args ...any) {
	if quiet {
		s.log.Debug(msg, args...)
		return
	}
	s.log.Warn(msg, args...)
}

// watchState is the watch's view of the cluster: one entry per managed
// node, by name. Only the Watch goroutine touches it.
type watchState struct {
	s     *Store
	fam   families
	out   chan<- lease.Batch
	nodes map[string]entry
}

// list reads every node, page by page, replaces the state with it and
// sends it as a Snapshot. It returns the list's resourceVersion, from
// which the watch starts.
func (w *watchState) list(ctx context.Context) (string, error) {
	nodes := make(map[string]entry, len(w.nodes))
	opts := metav1.ListOptions{Limit: w.s.page}
	var rv string
	for {
		page, err := w.s.cfg.Client.ListNodes(ctx, opts)
		if err != nil {
			return "", fmt.Errorf("list nodes: %w", err)
		}
		if rv == "" {
			// The first page fixes the snapshot; later pages continue it.
			rv = page.ResourceVersion
		}
		for i := range page.Items {
			n := &page.Items[i]
			if e, err := w.s.ann.decode(n, w.fam); err == nil {
				nodes[n.Name] = e
			}
		}
		if page.Continue == "" {
			break
		}
		opts.Continue = page.Continue
	}
	w.nodes = nodes
	w.s.setDown(false)
	b := lease.Batch{Snapshot: true, Revision: revision(rv), Events: make([]lease.Event, 0, len(nodes))}
	for name, e := range nodes {
		b.Events = append(b.Events, addedEvent(name, e))
	}
	return rv, w.send(ctx, b)
}

// watch follows changes from rv until the stream ends. It returns the
// resourceVersion to resume from and whether anything arrived.
func (w *watchState) watch(ctx context.Context, rv string) (string, bool, error) {
	wi, err := w.s.cfg.Client.WatchNodes(ctx, metav1.ListOptions{
		ResourceVersion: rv,
		// Bookmarks advance rv while nothing of ours changes, so a resume
		// after a quiet hour does not hit compacted history.
		AllowWatchBookmarks: true,
	})
	if err != nil {
		return rv, false, notOpened{fmt.Errorf("watch nodes from %s: %w", rv, err)}
	}
	defer wi.Stop()
	ch := wi.ResultChan()
	progressed := false
	for {
		var ev watch.Event
		var ok bool
		select {
		case <-ctx.Done():
			return rv, progressed, ctx.Err()
		case ev, ok = <-ch:
		}
		if !ok {
			if !progressed {
				// client-go turns a watch request that met an EOF or a
				// timeout (a relay or load balancer with its backend down)
				// into an empty watch, closed at once, with no error.
				return rv, false, notOpened{errEmptyWatch}
			}
			return rv, progressed, nil // the server ended the watch (timeout): resume
		}
		progressed = true
		w.s.setDown(false)
		// Take what else is already queued, so a burst becomes one batch.
		evs := []watch.Event{ev}
	drain:
		for len(evs) < maxBatch {
			select {
			case ev, ok := <-ch:
				if !ok {
					break drain
				}
				evs = append(evs, ev)
			default:
				break drain
			}
		}
		var b lease.Batch
		for _, ev := range evs {
			if ev.Type == watch.Error {
				err := apierrors.FromObject(ev.Object)
				if len(b.Events) > 0 {
					if serr := w.send(ctx, b); serr != nil {
						return rv, progressed, serr
					}
				}
				return rv, progressed, fmt.Errorf("watch nodes from %s: %w", rv, err)
			}
			n, isNode := ev.Object.(*corev1.Node)
			if !isNode {
				continue
			}
			rv = n.ResourceVersion
			b.Revision = revision(rv)
			b.Events = append(b.Events, w.apply(ev.Type, n)...)
		}
		if len(b.Events) > 0 {
			if err := w.send(ctx, b); err != nil {
				return rv, progressed, err
			}
		}
	}
}

// apply folds one watch event into the state and returns the lease
// events it amounts to: none for a heartbeat, Added for a new or changed
// lease, Removed when a node goes away or stops being managed.
func (w *watchState) apply(t watch.EventType, n *corev1.Node) []lease.Event {
	old, had := w.nodes[n.Name]
	var cur entry
	managed := false
	if t != watch.Deleted && t != watch.Bookmark {
		e, err := w.s.ann.decode(n, w.fam)
		cur, managed = e, err == nil
	}
	if t == watch.Bookmark {
		return nil
	}
	rev := revision(n.ResourceVersion)
	var evs []lease.Event
	switch {
	case !managed:
		if had {
			delete(w.nodes, n.Name)
			evs = append(evs, removedEvent(n.Name, old, rev))
		}
	case had && old.same(cur):
		w.nodes[n.Name] = cur // keep the newest revision
	default:
		if had && old.lease.ID() != cur.lease.ID() {
			evs = append(evs, removedEvent(n.Name, old, rev))
		}
		w.nodes[n.Name] = cur
		evs = append(evs, addedEvent(n.Name, cur))
	}
	return evs
}

func addedEvent(name string, e entry) lease.Event {
	return lease.Event{Type: lease.Added, Lease: e.lease, Err: e.err, Key: name}
}

func removedEvent(name string, e entry, rev int64) lease.Event {
	return lease.Event{Type: lease.Removed, Key: name,
		Lease: lease.Lease{Subnet: e.lease.Subnet, IPv6Subnet: e.lease.IPv6Subnet, Revision: rev}}
}

func (w *watchState) send(ctx context.Context, b lease.Batch) error {
	select {
	case w.out <- b:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
