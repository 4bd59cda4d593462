package daemon

import (
	"context"
	"time"

	"github.com/weft-net/weft/internal/masq"
)

// RuleSyncer is the part of masq.Manager the daemon uses.
type RuleSyncer interface {
	Sync(ctx context.Context, rs masq.RuleSet) (repaired int, err error)
	Mode() masq.Mode
}

// ruleSet plans the masquerade and forward rules for our lease.
func (d *daemon) ruleSet() masq.RuleSet {
	c := masq.Config{
		Masquerade:  d.opts.IPMasq,
		FullyRandom: !d.opts.IPMasqFullyRandomDisable,
		Forward:     d.opts.IPTablesForwardRules,
	}
	if d.net.EnableIPv4 {
		c.Network, c.Subnet = d.net.Network, d.self.Subnet
	}
	if d.net.EnableIPv6 {
		c.IPv6Network, c.IPv6Subnet = d.net.IPv6Network, d.self.IPv6Subnet
	}
	return masq.Plan(c)
}

// rulesWanted reports whether this daemon manages any rules.
func (d *daemon) rulesWanted() bool {
	return d.cfg.OpenRules != nil && (d.opts.IPMasq || d.opts.IPTablesForwardRules)
}

// syncRules keeps the rules in place: one Sync at start, then one every
// --iptables-resync. Each Sync reads our tables and rewrites only what is
// missing or changed (upstream's nftables mode never resyncs at all). A
// failure is retried at the next tick; /readyz reports it meanwhile.
func (d *daemon) syncRules(ctx context.Context) error {
	rs := d.ruleSet()
	d.cfg.Health.Rules(true, false)
	var m RuleSyncer
	every := d.opts.IPTablesResync
	if every <= 0 {
		every = 5 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for first := true; ; first = false {
		if m == nil {
			var err error
			if m, err = d.cfg.OpenRules(ctx, d.net); err != nil {
				m = nil
				d.log.Warn("masquerade rules: cannot open", "err", err)
			}
		}
		if m != nil {
			repaired, err := m.Sync(ctx, rs)
			d.cfg.Metrics.MasqSync(repairsAfterFirst(first, repaired), err)
			d.cfg.Health.Rules(true, err == nil)
			d.cfg.Status.setRules(string(m.Mode()))
			switch {
			case err != nil:
				d.log.Warn("masquerade rules: sync failed", "mode", m.Mode(), "err", err)
			case first:
				d.log.Info("masquerade rules in place", "mode", m.Mode(), "masquerade", d.opts.IPMasq, "forward", d.opts.IPTablesForwardRules)
			case repaired > 0:
				d.log.Info("masquerade rules repaired", "mode", m.Mode(), "rules", repaired)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// repairsAfterFirst: the first Sync installs the rules, which is not a
// repair.
func repairsAfterFirst(first bool, n int) int {
	if first {
		return 0
	}
	return n
}
