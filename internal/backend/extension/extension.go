// Package extension is the extension backend: the operator's commands do
// the work. PreStartupCommand runs before the lease is taken and its
// output is published as our lease's BackendData; PostStartupCommand runs
// once the lease is held; SubnetAddCommand and SubnetRemoveCommand run for
// each peer that comes and goes, with the peer's subnets and addresses in
// their environment and its BackendData on their standard input. The
// config fields, environment variables, standard input and the lease
// data are upstream's, so an extension config and its scripts move over
// unchanged.
//
// Where upstream runs a failed command once and forgets it (or, for the
// startup commands, exits), we retry with backoff, count every run in
// flannel_extension_commands_total, bound each by CommandTimeout, and run
// the remove command for a peer whose lease changed before adding it
// again. The daemon plans no kernel objects for this backend; it hands
// the runner (Serve) the accepted peers after every pass.
package extension

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"log/slog"
	"net/netip"
	"time"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// Options are the Backend object's commands; an empty one is not run.
type Options struct {
	PreStartupCommand   string
	PostStartupCommand  string
	SubnetAddCommand    string
	SubnetRemoveCommand string
}

// ParseOptions reads the commands from the whole Backend object. A field
// of the wrong type is a *config.FieldError naming it.
func ParseOptions(raw json.RawMessage) (Options, error) {
	var o Options
	if len(raw) == 0 {
		return o, nil
	}
	if err := json.Unmarshal(raw, &o); err != nil {
		if te := (*json.UnmarshalTypeError)(nil); asTypeError(err, &te) && te.Field != "" {
			return o, &config.FieldError{Field: "Backend." + te.Field, Reason: fmt.Sprintf("wrong type: got JSON %s, want a command line (string)", te.Value)}
		}
		return o, &config.FieldError{Field: "Backend", Reason: fmt.Sprintf("invalid JSON: %v", err)}
	}
	return o, nil
}

// Backend is the extension backend.
type Backend struct {
	net      *config.Network
	underlay backend.Underlay
	opts     Options
	log      *slog.Logger
	observe  func(command string, took time.Duration, err error)
	timeout  time.Duration
	// retryMin and retryMax bound the backoff after a failed command.
	retryMin, retryMax time.Duration
	// data is our lease's BackendData: PreStartupCommand's output as a
	// JSON string; nil when there is no such command.
	data json.RawMessage
}

// Factory implements backend.Factory: it parses the options and runs
// PreStartupCommand, whose failure stops the daemon before it takes a
// lease (as upstream's), since its output is what peers need of us.
func Factory(env backend.Env) (backend.Backend, error) {
	opts, err := ParseOptions(env.Network.Backend.Raw)
	if err != nil {
		return nil, err
	}
	b := &Backend{net: env.Network, underlay: env.Underlay, opts: opts, log: env.Log,
		observe: env.CommandRan, timeout: CommandTimeout,
		retryMin: RetryMin, retryMax: RetryMax}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	pre := command{name: "PreStartupCommand", line: opts.PreStartupCommand}
	if !pre.set() {
		b.log.Info("extension: no PreStartupCommand configured")
		return b, nil
	}
	r, err := b.run(context.Background(), pre, nil, "")
	if err != nil {
		return nil, fmt.Errorf("extension: %s failed: %w", pre.name, err)
	}
	if b.data, err = json.Marshal(r.output); err != nil {
		return nil, err
	}
	return b, nil
}

var _ backend.Backend = (*Backend)(nil)
var _ backend.PeerRunner = (*Backend)(nil)

// Type implements backend.Backend.
func (b *Backend) Type() string { return config.BackendExtension }

// MTU is the underlay's: what the commands build is theirs to size.
func (b *Backend) MTU() int { return b.underlay.MTU }

// Attrs implements backend.Backend. As upstream's, the addresses are the
// interface's own (not --public-ip's), one per enabled family.
func (b *Backend) Attrs() lease.Attrs {
	a := backend.PublicAttrs(b.net, config.BackendExtension, b.underlay.LocalIP, b.underlay.LocalIPv6)
	a.BackendData = b.data
	return a
}

// Resume implements backend.Backend: PreStartupCommand ran afresh.
func (b *Backend) Resume(lease.Lease) lease.Attrs { return b.Attrs() }

// Peer implements backend.Backend: an extension peer whose BackendData
// (if any) is a JSON string, which its commands get on standard input.
// No kernel objects: the commands are the dataplane.
func (b *Backend) Peer(self, p lease.Lease) (dataplane.Objects, error) {
	if err := backend.CheckPeer(b.net, config.BackendExtension, self, p); err != nil {
		return dataplane.Objects{}, err
	}
	if _, err := peerStdin(p); err != nil {
		return dataplane.Objects{}, backend.Skipf(backend.ReasonBackendData, "lease %s: %v", p.Key(), err)
	}
	return dataplane.Objects{}, nil
}

// PlanBase implements backend.Backend: no device of ours.
func (b *Backend) PlanBase(lease.Lease) *dataplane.State { return dataplane.NewState() }

// ProbeAddr implements backend.Backend: what answers for a peer is the
// operator's commands' business, so peers are not probed.
func (b *Backend) ProbeAddr(lease.Lease) netip.Addr { return netip.Addr{} }

// Serve implements backend.PeerRunner.
func (b *Backend) Serve(ctx context.Context, self lease.Lease, peers <-chan iter.Seq[lease.Lease]) error {
	return newRunner(b, self).serve(ctx, peers)
}

// peerStdin is what a peer's commands read: its BackendData decoded as
// a JSON string, or "" without data.
func peerStdin(p lease.Lease) (string, error) {
	if len(p.Attrs.BackendData) == 0 {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(p.Attrs.BackendData, &s); err != nil {
		return "", fmt.Errorf("BackendData is not a JSON string (an extension host's PreStartupCommand output): %s", lease.Shorten(string(p.Attrs.BackendData)))
	}
	return s, nil
}

// run runs c, logs its output and reports it to the metrics.
func (b *Backend) run(ctx context.Context, c command, env []string, stdin string) (result, error) {
	r, err := c.run(ctx, env, stdin, b.timeout)
	if b.observe != nil {
		b.observe(c.name, r.took, err)
	}
	if err != nil {
		b.log.Error("extension: command failed", "command", c.name, "line", c.line, "err", err, "output", r.output, "took", r.took.Round(time.Millisecond))
		if r.output != "" {
			err = fmt.Errorf("%w: %s", err, r.output)
		}
		return r, err
	}
	b.log.Info("extension: ran command", "command", c.name, "line", c.line, "output", r.output, "took", r.took.Round(time.Millisecond))
	return r, nil
}

func asTypeError(err error, te **json.UnmarshalTypeError) bool {
	t, ok := err.(*json.UnmarshalTypeError)
	if ok {
		*te = t
	}
	return ok
}
