package masq

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"sigs.k8s.io/knftables"
)

// Upstream flannel's nftables names: one table per family, owned entirely.
const (
	nftTableV4   = "flannel-ipv4"
	nftTableV6   = "flannel-ipv6"
	nftPostrtg   = "postrtg"
	nftForward   = "forward"
	nftProbe     = "weft-probe"
	masqComment  = "flanneld masq"
	fwdComment   = "flanneld forward"
	tableComment = "weft: flannel masquerade and forward rules"
)

// NFTables is the nftables Manager. It owns the tables "ip flannel-ipv4"
// and "ip6 flannel-ipv6" and nothing else.
//
// knftables cannot read a rule's text back from the kernel, only its
// comment, so every rule carries a comment naming its purpose and a hash
// of its text ("flanneld masq 1a2b3c4d"): a chain whose comments are the
// wanted ones, in order, holds the wanted rules. Upstream's rules have no
// comments, so an upstream table is rewritten once and then left alone.
type NFTables struct {
	log *slog.Logger

	mu  sync.Mutex
	nft [2]knftables.Interface // by family; nil when that family is unavailable
	// fullyRandom caches whether the kernel takes "masquerade fully-random";
	// nil until first needed.
	fullyRandom *bool
}

var _ Manager = (*NFTables)(nil)

// OpenNFTables returns an NFTables using the host's nft binary. IPv4 is
// required; IPv6 support is optional until a RuleSet asks for IPv6 rules.
func OpenNFTables(log *slog.Logger) (*NFTables, error) {
	v4, err := knftables.New(knftables.IPv4Family, nftTableV4)
	if err != nil {
		return nil, fmt.Errorf("masq: nftables: %w", err)
	}
	v6, err := knftables.New(knftables.IPv6Family, nftTableV6)
	if err != nil {
		log.Debug("masq: nftables has no IPv6 support", "err", err)
		v6 = nil
	}
	return NewNFTables(log, v4, v6), nil
}

// NewNFTables returns an NFTables over the given interfaces, which must be
// bound to (knftables.IPv4Family, "flannel-ipv4") and (knftables.IPv6Family,
// "flannel-ipv6"); either may be nil when that family is unavailable. Tests
// pass knftables.Fake.
func NewNFTables(log *slog.Logger, v4, v6 knftables.Interface) *NFTables {
	return &NFTables{log: log, nft: [2]knftables.Interface{ipv4: v4, ipv6: v6}}
}

// Mode implements Manager.
func (m *NFTables) Mode() Mode { return ModeNFTables }

// Sync implements Manager. Each family is one transaction; a failure in one
// does not stop the other.
func (m *NFTables) Sync(ctx context.Context, rs RuleSet) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	total := 0
	var errs []error
	for _, f := range []family{ipv4, ipv6} {
		n, err := m.syncFamily(ctx, f, rs.family(f))
		total += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// Cleanup implements Manager: it deletes both tables.
func (m *NFTables) Cleanup(ctx context.Context) error {
	_, err := m.Sync(ctx, RuleSet{})
	return err
}

// nftChain is one of our base chains with its wanted rules.
type nftChain struct {
	name     string
	typ      knftables.BaseChainType
	hook     knftables.BaseChainHook
	priority knftables.BaseChainPriority
	comment  string
	rules    []*knftables.Rule
}

func (c *nftChain) object() *knftables.Chain {
	return &knftables.Chain{
		Name:     c.name,
		Type:     knftables.PtrTo(c.typ),
		Hook:     knftables.PtrTo(c.hook),
		Priority: knftables.PtrTo(c.priority),
		Comment:  knftables.PtrTo(c.comment),
	}
}

func (m *NFTables) syncFamily(ctx context.Context, f family, fr FamilyRules) (int, error) {
	wanted := len(fr.Masquerade) > 0 || len(fr.Forward) > 0
	nft := m.nft[f]
	if nft == nil {
		if wanted {
			return 0, fmt.Errorf("masq: nftables: no %s support on this host", f)
		}
		return 0, nil
	}
	table := nftTableName(f)

	fullyRandom := true
	if wanted && wantsFullyRandom(fr.Masquerade) {
		fullyRandom = m.probeFullyRandom(ctx, nft)
	}
	chains := nftChains(f, fr, fullyRandom)

	// The one read: every rule of our table with its chain and comment.
	current, err := nft.ListRules(ctx, "")
	exists := true
	if knftables.IsNotFound(err) {
		exists = false
	} else if err != nil {
		return 0, fmt.Errorf("masq: nftables: read table %s %s: %w", nftFamily(f), table, err)
	}
	have := make(map[string][]string)
	for _, r := range current {
		c := ""
		if r.Comment != nil {
			c = *r.Comment
		}
		have[r.Chain] = append(have[r.Chain], c)
	}

	tx := nft.NewTransaction()
	repaired := 0
	if !wanted {
		if exists {
			tx.Delete(&knftables.Table{})
			repaired++
		}
	} else {
		// Adding an existing table is a no-op, so this is safe either way.
		tx.Add(&knftables.Table{Comment: knftables.PtrTo(tableComment)})
		for _, c := range chains {
			got, present := have[c.name]
			delete(have, c.name)
			if len(c.rules) == 0 {
				if present {
					tx.Flush(&knftables.Chain{Name: c.name})
					tx.Delete(&knftables.Chain{Name: c.name})
					repaired++
				}
				continue
			}
			if present && slices.Equal(got, ruleComments(c.rules)) {
				continue
			}
			// Order matters, so a chain that differs at all is rewritten
			// whole: add (creates it if missing), flush, fill.
			tx.Add(c.object())
			tx.Flush(&knftables.Chain{Name: c.name})
			for _, r := range c.rules {
				tx.Add(r)
			}
			repaired++
		}
		// Anything else in our table is stale.
		for _, name := range sortedKeys(have) {
			tx.Flush(&knftables.Chain{Name: name})
			tx.Delete(&knftables.Chain{Name: name})
			repaired++
		}
	}
	if repaired == 0 {
		return 0, nil
	}
	if err := nft.Run(ctx, tx); err != nil {
		return 0, fmt.Errorf("masq: nftables: write table %s %s: %w", nftFamily(f), table, err)
	}
	m.log.Info("masq: nftables rules repaired", "family", f.String(), "table", table, "repaired", repaired)
	return repaired, nil
}

// probeFullyRandom asks the kernel, once, whether it can masquerade with
// fully-random ports; nft --check runs the transaction without committing.
func (m *NFTables) probeFullyRandom(ctx context.Context, nft knftables.Interface) bool {
	if m.fullyRandom != nil {
		return *m.fullyRandom
	}
	tx := nft.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Add(&knftables.Chain{
		Name:     nftProbe,
		Type:     knftables.PtrTo(knftables.NATType),
		Hook:     knftables.PtrTo(knftables.PostroutingHook),
		Priority: knftables.PtrTo(knftables.SNATPriority),
	})
	tx.Add(&knftables.Rule{Chain: nftProbe, Rule: "masquerade fully-random"})
	err := nft.Check(ctx, tx)
	if err != nil && ctx.Err() != nil {
		// Cancelled, not an answer: ask again next time.
		return false
	}
	ok := err == nil
	if !ok {
		m.log.Warn("masq: nftables cannot masquerade fully-random; using plain masquerade", "err", err)
	}
	m.fullyRandom = &ok
	return ok
}

func nftTableName(f family) string {
	if f == ipv6 {
		return nftTableV6
	}
	return nftTableV4
}

func nftFamily(f family) string {
	if f == ipv6 {
		return "ip6"
	}
	return "ip"
}

// nftChains renders a family's rules into our two base chains, postrouting
// NAT first, always both (a chain with no rules is one to remove).
func nftChains(f family, fr FamilyRules, fullyRandom bool) []*nftChain {
	render := func(chain, comment string, rules []Rule) []*knftables.Rule {
		out := make([]*knftables.Rule, 0, len(rules))
		for _, r := range rules {
			text := nftRuleText(f, r, fullyRandom)
			out = append(out, &knftables.Rule{
				Chain:   chain,
				Rule:    text,
				Comment: knftables.PtrTo(ruleComment(comment, text)),
			})
		}
		return out
	}
	return []*nftChain{
		{
			name:     nftPostrtg,
			typ:      knftables.NATType,
			hook:     knftables.PostroutingHook,
			priority: knftables.SNATPriority,
			comment:  "weft: masquerade pod traffic leaving the cluster network",
			rules:    render(nftPostrtg, masqComment, fr.Masquerade),
		},
		{
			name:     nftForward,
			typ:      knftables.FilterType,
			hook:     knftables.ForwardHook,
			priority: knftables.FilterPriority,
			comment:  "weft: accept forwarded cluster traffic",
			rules:    render(nftForward, fwdComment, fr.Forward),
		},
	}
}

// nftRuleText renders r in nft syntax. The mark is matched under a mask,
// as kube-proxy's 0x4000/0x4000 in iptables, so other mark bits do not
// hide it.
func nftRuleText(f family, r Rule, fullyRandom bool) string {
	proto := nftFamily(f)
	var parts []string
	addr := func(dir string, m Match) {
		if !m.Prefix.IsValid() {
			return
		}
		parts = append(parts, proto, dir)
		if m.Not {
			parts = append(parts, "!=")
		}
		parts = append(parts, m.Prefix.Masked().String())
	}
	addr("saddr", r.Src)
	addr("daddr", r.Dst)
	if r.Mark != 0 {
		parts = append(parts, fmt.Sprintf("meta mark & 0x%x == 0x%x", r.Mark, r.Mark))
	}
	switch r.Action {
	case ActionReturn:
		parts = append(parts, "return")
	case ActionMasquerade:
		parts = append(parts, "masquerade")
		if r.FullyRandom && fullyRandom {
			parts = append(parts, "fully-random")
		}
	case ActionAccept:
		parts = append(parts, "accept")
	}
	return strings.Join(parts, " ")
}

// ruleComment is the rule's identity as read back from the kernel: its
// purpose, as upstream's iptables comments, and a hash of its text.
func ruleComment(purpose, text string) string {
	h := fnv.New32a()
	h.Write([]byte(text))
	return fmt.Sprintf("%s %08x", purpose, h.Sum32())
}

func ruleComments(rules []*knftables.Rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = *r.Comment
	}
	return out
}

func wantsFullyRandom(rules []Rule) bool {
	for _, r := range rules {
		if r.Action == ActionMasquerade && r.FullyRandom {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
