package masq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/coreos/go-iptables/iptables"
)

// Upstream flannel's iptables names.
const (
	iptPostrtg = "FLANNEL-POSTRTG"
	iptForward = "FLANNEL-FWD"
)

// iptWaitSeconds bounds how long a command waits for the xtables lock
// (iptables-legacy; the nft variant has no lock), so a stuck holder cannot
// stall the resync loop for ever.
const iptWaitSeconds = 5

// iptTool is what the IPTables manager needs from one family's tools.
type iptTool interface {
	// List returns a chain's rules in `iptables -S` form ("-A CHAIN …"),
	// and whether the chain exists.
	List(table, chain string) (rules []string, exists bool, err error)
	// Restore feeds payload to iptables-restore --noflush.
	Restore(ctx context.Context, payload []byte) error
	// HasRandomFully says whether MASQUERADE --random-fully is available.
	HasRandomFully() bool
}

// IPTables is the iptables Manager. It owns, per family, the chains
// FLANNEL-POSTRTG (nat) and FLANNEL-FWD (filter), the jumps to them, and
// every rule in POSTROUTING or FORWARD commented "flanneld masq" or
// "flanneld forward" (older flannels put their rules there directly). It
// never flushes or deletes anything else.
type IPTables struct {
	log *slog.Logger

	mu    sync.Mutex
	tools [2]iptTool // by family; nil when that family's binary is missing
}

var _ Manager = (*IPTables)(nil)

// OpenIPTables returns an IPTables using the host's iptables and
// iptables-restore, in the variant (legacy or nft) the host uses: see
// chooseIPTables. If the other variant holds our chains, it removes them,
// so that only one set of flannel rules is ever in force. iptables is
// required; ip6tables only once a RuleSet asks for IPv6 rules.
func OpenIPTables(ctx context.Context, log *slog.Logger) (*IPTables, error) {
	ch := chooseIPTables(ctx, log, execIPTCommands())
	log.Info("masq: iptables variant", "iptables", ch.bin4, "reason", ch.reason)
	m, err := openIPTables(log, ch.bin4, ch.bin6)
	if err != nil {
		return nil, err
	}
	if ch.stale != nil {
		if other, err := openIPTables(log, ch.stale[0], ch.stale[1]); err != nil {
			log.Warn("masq: cannot open the other iptables variant to remove its flannel rules", "iptables", ch.stale[0], "err", err)
		} else if err := other.Cleanup(ctx); err != nil {
			log.Warn("masq: could not remove flannel rules from the other iptables variant", "iptables", ch.stale[0], "err", err)
		} else {
			log.Info("masq: removed flannel rules from the other iptables variant", "iptables", ch.stale[0])
		}
	}
	return m, nil
}

// openIPTables uses the named binaries (and their -restore companions);
// tests use it to run the legacy variant explicitly.
func openIPTables(log *slog.Logger, bin4, bin6 string) (*IPTables, error) {
	v4, err := newExecTool(iptables.ProtocolIPv4, bin4)
	if err != nil {
		return nil, err
	}
	var tools [2]iptTool
	tools[ipv4] = v4
	if v6, err := newExecTool(iptables.ProtocolIPv6, bin6); err != nil {
		log.Debug("masq: ip6tables unavailable", "err", err)
	} else {
		tools[ipv6] = v6
	}
	return &IPTables{log: log, tools: tools}, nil
}

// Mode implements Manager.
func (m *IPTables) Mode() Mode { return ModeIPTables }

// Sync implements Manager: per family, two reads per table (the built-in
// chain and ours) and, when something differs, one iptables-restore.
func (m *IPTables) Sync(ctx context.Context, rs RuleSet) (int, error) {
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

// Cleanup implements Manager: it removes our chains, the jumps to them and
// every flannel-commented rule in POSTROUTING and FORWARD.
func (m *IPTables) Cleanup(ctx context.Context) error {
	_, err := m.Sync(ctx, RuleSet{})
	return err
}

// iptChain is one of our chains: where it lives, what jumps to it, and its
// wanted rules in `-S` form (empty: remove it).
type iptChain struct {
	table, builtin, name, comment string
	rules                         []string
}

// jump is the rule in the built-in chain that sends packets to ours.
func (c *iptChain) jump() string {
	return fmt.Sprintf("-A %s -m comment --comment %s -j %s", c.builtin, quoteComment(c.comment), c.name)
}

func iptChains(fr FamilyRules, randomFully bool) []*iptChain {
	render := func(chain, comment string, rules []Rule) []string {
		out := make([]string, 0, len(rules))
		for _, r := range rules {
			out = append(out, iptRuleText(chain, comment, r, randomFully))
		}
		return out
	}
	return []*iptChain{
		{table: "nat", builtin: "POSTROUTING", name: iptPostrtg, comment: masqComment,
			rules: render(iptPostrtg, masqComment, fr.Masquerade)},
		{table: "filter", builtin: "FORWARD", name: iptForward, comment: fwdComment,
			rules: render(iptForward, fwdComment, fr.Forward)},
	}
}

// iptRuleText renders r exactly as `iptables -S` prints it back, so that
// reading the chain and comparing lines is enough to find drift. The text
// is the same for both families; only the binary differs.
func iptRuleText(chain, comment string, r Rule, randomFully bool) string {
	parts := []string{"-A", chain}
	addr := func(flag string, m Match) {
		if !m.Prefix.IsValid() {
			return
		}
		if m.Not {
			parts = append(parts, "!")
		}
		parts = append(parts, flag, m.Prefix.Masked().String())
	}
	addr("-s", r.Src)
	addr("-d", r.Dst)
	if r.Mark != 0 {
		parts = append(parts, "-m", "mark", "--mark", fmt.Sprintf("0x%x/0x%x", r.Mark, r.Mark))
	}
	parts = append(parts, "-m", "comment", "--comment", quoteComment(comment))
	switch r.Action {
	case ActionReturn:
		parts = append(parts, "-j", "RETURN")
	case ActionMasquerade:
		parts = append(parts, "-j", "MASQUERADE")
		if r.FullyRandom && randomFully {
			parts = append(parts, "--random-fully")
		}
	case ActionAccept:
		parts = append(parts, "-j", "ACCEPT")
	}
	return strings.Join(parts, " ")
}

// quoteComment quotes a comment as iptables -S does (our comments have a
// space and no quotes, so plain double quotes are exact).
func quoteComment(c string) string { return `"` + c + `"` }

func (m *IPTables) syncFamily(ctx context.Context, f family, fr FamilyRules) (int, error) {
	wanted := len(fr.Masquerade) > 0 || len(fr.Forward) > 0
	tool := m.tools[f]
	if tool == nil {
		if wanted {
			return 0, fmt.Errorf("masq: %s: no %s binary on this host", f, iptBinary(f))
		}
		return 0, nil
	}
	var payload bytes.Buffer
	repaired := 0
	for _, c := range iptChains(fr, tool.HasRandomFully()) {
		section, n, err := iptDiff(tool, c)
		if err != nil {
			return 0, fmt.Errorf("masq: %s: %w", iptBinary(f), err)
		}
		if n > 0 {
			payload.WriteString(section)
			repaired += n
		}
	}
	if repaired == 0 {
		return 0, nil
	}
	if err := tool.Restore(ctx, payload.Bytes()); err != nil {
		return 0, fmt.Errorf("masq: %s-restore: %w", iptBinary(f), err)
	}
	m.log.Info("masq: iptables rules repaired", "family", f.String(), "repaired", repaired)
	return repaired, nil
}

// iptDiff reads the built-in chain and ours, and returns the
// iptables-restore section that makes them right, and how many things it
// repairs (0: the section is not needed).
//
// With --noflush, declaring a user chain (":NAME - [0:0]") creates it or
// flushes it, which rewrites our chain whole (order matters) while the
// built-in chain is only ever edited rule by rule.
func iptDiff(tool iptTool, c *iptChain) (string, int, error) {
	builtin, _, err := tool.List(c.table, c.builtin)
	if err != nil {
		return "", 0, fmt.Errorf("list %s %s: %w", c.table, c.builtin, err)
	}
	ours, exists, err := tool.List(c.table, c.name)
	if err != nil {
		return "", 0, fmt.Errorf("list %s %s: %w", c.table, c.name, err)
	}
	ours = appendRules(nil, ours, c.name)

	var head, body, tail []string
	repaired := 0
	wanted := len(c.rules) > 0

	if wanted && (!exists || !slices.Equal(ours, c.rules)) {
		head = append(head, ":"+c.name+" - [0:0]")
		body = append(body, c.rules...)
		repaired++
	}
	// In the built-in chain, keep one exact jump (if wanted) and delete
	// every other rule carrying our comment: duplicates, and rules older
	// flannels appended there directly (possibly for an old subnet).
	jump, marker := c.jump(), "--comment "+quoteComment(c.comment)
	keptJump := false
	for _, r := range appendRules(nil, builtin, c.builtin) {
		if !strings.Contains(r, marker) {
			continue
		}
		if wanted && r == jump && !keptJump {
			keptJump = true
			continue
		}
		body = append(body, "-D"+strings.TrimPrefix(r, "-A"))
		repaired++
	}
	if wanted && !keptJump {
		// Appended, as upstream does, so rules other software inserted at
		// the top keep running first.
		body = append(body, jump)
		repaired++
	}
	if !wanted && exists {
		// Flush (by declaring it), drop the jumps above, then delete.
		head = append(head, ":"+c.name+" - [0:0]")
		tail = append(tail, "-X "+c.name)
		repaired++
	}
	if repaired == 0 {
		return "", 0, nil
	}
	var b strings.Builder
	b.WriteString("*" + c.table + "\n")
	for _, l := range slices.Concat(head, body, tail) {
		b.WriteString(l + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String(), repaired, nil
}

// appendRules appends the "-A chain …" lines of an -S listing to dst,
// skipping the -P/-N lines.
func appendRules(dst, listing []string, chain string) []string {
	prefix := "-A " + chain + " "
	for _, l := range listing {
		if strings.HasPrefix(l, prefix) {
			dst = append(dst, l)
		}
	}
	return dst
}

func iptBinary(f family) string {
	if f == ipv6 {
		return "ip6tables"
	}
	return "iptables"
}

// execTool runs the real binaries: go-iptables for reading (it knows the
// version quirks and the lock flags) and iptables-restore for writing,
// which go-iptables does not wrap.
type execTool struct {
	ipt     *iptables.IPTables
	restore string
}

func newExecTool(proto iptables.Protocol, name string) (*execTool, error) {
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(name), iptables.Timeout(iptWaitSeconds))
	if err != nil {
		return nil, fmt.Errorf("masq: %s: %w", name, err)
	}
	restore, err := exec.LookPath(name + "-restore")
	if err != nil {
		return nil, fmt.Errorf("masq: %s-restore: %w", name, err)
	}
	return &execTool{ipt: ipt, restore: restore}, nil
}

func (t *execTool) List(table, chain string) ([]string, bool, error) {
	rules, err := t.ipt.List(table, chain)
	if err == nil {
		return rules, true, nil
	}
	// A missing chain is reported differently by each iptables version
	// (iptables-nft 1.8.9 calls it "incompatible"), so ask again through
	// the table's chain list rather than parsing the message; this costs a
	// second read only when something is already off.
	exists, cerr := t.ipt.ChainExists(table, chain)
	if cerr == nil && !exists {
		return nil, false, nil
	}
	return nil, false, err
}

func (t *execTool) Restore(ctx context.Context, payload []byte) error {
	cmd := exec.CommandContext(ctx, t.restore, "--noflush", "--wait="+strconv.Itoa(iptWaitSeconds))
	cmd.Stdin = bytes.NewReader(payload)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s\ninput:\n%s", err, bytes.TrimSpace(out), payload)
	}
	return nil
}

func (t *execTool) HasRandomFully() bool { return t.ipt.HasRandomFully() }
