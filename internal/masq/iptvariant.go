package masq

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"os/exec"
	"strings"
)

// The iptables tools come in two variants that write to different kernel
// backends: iptables-legacy (x_tables) and iptables-nft (nf_tables through
// its xtables compatibility). Each sees only its own backend's rules, and a
// packet goes through both, so flannel's chains must sit in the backend
// kube-proxy and the kubelet use: there our POSTROUTING jump and
// FORWARD rules are ordered against theirs, and an operator listing the
// rules with the host's iptables sees all of them. A container image
// cannot know which one the host uses, and its plain `iptables` is whatever
// the image's distribution defaults to (nft, on Debian), so OpenIPTables
// asks the kernel: the variant whose backend holds KUBE-* chains (the
// kubelet creates KUBE-IPTABLES-HINT and KUBE-KUBELET-CANARY in the
// backend it uses), else the one holding more rules, else plain iptables.

// iptVariantEvidence is what one variant's *-save output shows.
type iptVariantEvidence struct {
	kube    bool // a KUBE-* chain exists
	flannel bool // one of our chains exists
	rules   int  // rules ("-A" lines)
}

// scanIPTSave reads iptables-save output.
func scanIPTSave(out []byte, ev *iptVariantEvidence) {
	s := bufio.NewScanner(bytes.NewReader(out))
	for s.Scan() {
		line := s.Text()
		switch {
		case strings.HasPrefix(line, ":KUBE-"):
			ev.kube = true
		case strings.HasPrefix(line, ":"+iptPostrtg+" "), strings.HasPrefix(line, ":"+iptForward+" "):
			ev.flannel = true
		case strings.HasPrefix(line, "-A "):
			ev.rules++
		}
	}
}

// iptCommands is how variant detection runs the tools: exec.LookPath and
// the output of a command, outside tests.
type iptCommands struct {
	lookPath func(string) (string, error)
	output   func(ctx context.Context, name string) ([]byte, error)
}

func execIPTCommands() iptCommands {
	return iptCommands{
		lookPath: exec.LookPath,
		output: func(ctx context.Context, name string) ([]byte, error) {
			return exec.CommandContext(ctx, name).Output()
		},
	}
}

// iptChoice is the outcome of variant detection.
type iptChoice struct {
	bin4, bin6 string // the binaries to use
	reason     string // why, for the log
	// stale is the other variant's binaries (bin4, bin6) when it holds
	// our chains: left by a weft before this detection, or by a flannel
	// image that chose differently. Nil otherwise.
	stale []string
}

// chooseIPTables picks the binaries: "iptables-legacy"/"ip6tables-legacy"
// or the -nft pair when both variants are installed and the kernel shows
// which one the host uses, plain "iptables"/"ip6tables" otherwise.
func chooseIPTables(ctx context.Context, log *slog.Logger, c iptCommands) iptChoice {
	deflt := func(why string) iptChoice { return iptChoice{bin4: "iptables", bin6: "ip6tables", reason: why} }
	variants := [2]string{"legacy", "nft"}
	var ev [2]iptVariantEvidence
	for i, v := range variants {
		save4 := "iptables-" + v + "-save"
		if _, err := c.lookPath("iptables-" + v); err != nil {
			return deflt("iptables-" + v + " is not installed")
		}
		if _, err := c.lookPath(save4); err != nil {
			return deflt(save4 + " is not installed")
		}
		for _, save := range []string{save4, "ip6tables-" + v + "-save"} {
			out, err := c.output(ctx, save)
			if err != nil {
				// A backend the kernel cannot provide holds no rules.
				log.Debug("masq: reading iptables variant", "cmd", save, "err", err)
				continue
			}
			scanIPTSave(out, &ev[i])
		}
	}
	pick := func(i int, why string) iptChoice {
		ch := iptChoice{bin4: "iptables-" + variants[i], bin6: "ip6tables-" + variants[i], reason: why}
		if o := 1 - i; ev[o].flannel {
			ch.stale = []string{"iptables-" + variants[o], "ip6tables-" + variants[o]}
		}
		return ch
	}
	legacy, nft := ev[0], ev[1]
	switch {
	case legacy.kube && !nft.kube:
		return pick(0, "KUBE-* chains are in iptables-legacy")
	case nft.kube && !legacy.kube:
		return pick(1, "KUBE-* chains are in iptables-nft")
	case legacy.rules > nft.rules:
		return pick(0, "iptables-legacy holds more rules")
	case nft.rules > legacy.rules:
		return pick(1, "iptables-nft holds more rules")
	}
	return deflt("neither variant holds rules; the system default")
}
