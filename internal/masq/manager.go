package masq

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
)

// Manager makes the kernel's rules match a RuleSet. Implementations are
// safe for concurrent use.
type Manager interface {
	// Sync reads the rules in place and rewrites only what is missing,
	// stale or out of order. repaired counts what it had to rewrite or
	// remove (a chain, a jump, a stale table or rule); 0 means the kernel
	// already matched and nothing was written.
	Sync(ctx context.Context, rs RuleSet) (repaired int, err error)
	// Cleanup removes everything this Manager's mode owns, for both
	// address families.
	Cleanup(ctx context.Context) error
	// Mode says which mode this is.
	Mode() Mode
}

// Mode is the rule backend.
type Mode string

// The modes.
const (
	ModeIPTables Mode = "iptables"
	ModeNFTables Mode = "nftables"
)

// Select picks the mode from the network config's EnableNFTables: nftables
// when true, iptables when false, and when it is unset, iptables if the
// host has an iptables binary (upstream's default) and nftables otherwise.
// lookPath is exec.LookPath outside tests.
func Select(enableNFTables *bool, lookPath func(string) (string, error)) Mode {
	if enableNFTables != nil {
		if *enableNFTables {
			return ModeNFTables
		}
		return ModeIPTables
	}
	if _, err := lookPath("iptables"); err == nil {
		return ModeIPTables
	}
	return ModeNFTables
}

// Open returns the Manager for mode. The rules the other mode may have
// left behind (from an earlier run, or from upstream flannel) are removed
// once this mode's first Sync has put its own in place — not before, so
// that switching modes never leaves a moment with no masquerade or forward
// rules, nor two sets of rules afterwards. Not being able to clean the
// other mode (its tools are missing, say) is logged, not fatal: then there
// is nothing of it to clean, or nothing we could do about it.
func Open(ctx context.Context, log *slog.Logger, mode Mode) (Manager, error) {
	var (
		m, other Manager
		err      error
	)
	switch mode {
	case ModeNFTables:
		if m, err = OpenNFTables(log); err != nil {
			return nil, err
		}
		if other, err = OpenIPTables(ctx, log); err != nil {
			log.Debug("masq: no iptables to clean up", "err", err)
			other = nil
		}
	case ModeIPTables:
		if m, err = OpenIPTables(ctx, log); err != nil {
			return nil, err
		}
		if other, err = OpenNFTables(log); err != nil {
			log.Debug("masq: no nftables to clean up", "err", err)
			other = nil
		}
	default:
		return nil, fmt.Errorf("masq: unknown mode %q", mode)
	}
	return &handover{Manager: m, other: other, log: log}, nil
}

// handover is a Manager that removes the other mode's rules after its own
// first successful Sync.
type handover struct {
	Manager
	log   *slog.Logger
	mu    sync.Mutex
	other Manager // nil once cleaned
}

func (h *handover) Sync(ctx context.Context, rs RuleSet) (int, error) {
	n, err := h.Manager.Sync(ctx, rs)
	if err != nil {
		return n, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.other != nil {
		if err := h.other.Cleanup(ctx); err != nil {
			h.log.Warn("masq: could not remove the rules the other mode left", "mode", h.other.Mode(), "err", err)
		}
		h.other = nil
	}
	return n, nil
}
