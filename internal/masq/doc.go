// Package masq programs flanneld's masquerade (--ip-masq) and forward
// (--iptables-forward-rules) rules, with nftables or with iptables.
//
// The work is split in two. [Plan] is a pure function from the daemon's
// configuration to a [RuleSet]: which packets to leave alone and which to
// masquerade, in upstream flannel's order. A [Manager] then makes the
// kernel match a RuleSet. There are two Managers, both first-class:
//
//   - [NFTables] (through sigs.k8s.io/knftables) owns the tables
//     "ip flannel-ipv4" and "ip6 flannel-ipv6", with a NAT chain "postrtg"
//     on the postrouting hook and a filter chain "forward" on the forward
//     hook.
//   - [IPTables] (through github.com/coreos/go-iptables, writing with
//     iptables-restore --noflush) owns the chains FLANNEL-POSTRTG (nat) and
//     FLANNEL-FWD (filter), the jumps to them from POSTROUTING and FORWARD,
//     and every rule commented "flanneld masq" or "flanneld forward" in
//     those two built-in chains; the same for ip6tables. Where both
//     iptables variants are installed (as in the image), it uses the one
//     whose kernel backend the kubelet and kube-proxy use ([OpenIPTables]).
//
// Table, chain and comment names are upstream flannel's, so that a host
// can move from upstream to weft and back, and between the two modes, and
// each start-up clears what the other left behind ([Open]).
//
// Sync is built to run every --iptables-resync period: it reads what the
// kernel has (one `nft list table` per family; for iptables, the built-in
// chain and ours per table), and only when something is missing, stale or
// out of order does it write, rewriting just the affected chains: one nft
// transaction per family, or one iptables-restore run per family that
// commits each table atomically. Because the managers own their chains
// outright, rules for a previous network or subnet (say, after the lease
// changed) disappear on the first Sync with the new RuleSet, so the daemon
// need not remember the old ones; nothing else in the built-in chains or
// in other tables is ever touched.
//
// Two deliberate differences from upstream's nftables mode, which is
// marked experimental there: the kube-proxy mark is matched under its mask
// (as the iptables rules do, "mark & 0x4000 == 0x4000", not "mark 0x4000"),
// and the rule that spares traffic from outside the cluster to a local pod
// matches "saddr != cluster network" as in iptables, where upstream's nft
// rule says "saddr != pod subnet" and so also spared host-to-remote-pod
// traffic that its iptables mode masquerades.
package masq
