package demo

import (
	"cmp"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

func sortPods(p []Pod) {
	sort.Slice(p, func(i, j int) bool { return p[i].Name < p[j].Name })
}

// Print writes the human-readable report.
func (res *Result) Print(w io.Writer) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "LEASES")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSUBNET\tIPV6 SUBNET\tPUBLIC IP\tMAC / KEY")
	for _, l := range res.Leases {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", l.Host, dash(l.Subnet), dash(l.IPv6Subnet), cmp.Or(l.PublicIP, l.PublicIPv6), dash(l.Identity))
	}
	tw.Flush()

	fmt.Fprintln(w)
	fmt.Fprintln(w, "PODS")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tHOST\tIPV4\tIPV6")
	for _, p := range res.PodList {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, p.Host, dash(p.IPv4), dash(p.IPv6))
	}
	tw.Flush()

	for _, fam := range []string{"ipv4", "ipv6"} {
		cells := map[[2]string]Ping{}
		for _, p := range res.Pings {
			if p.Family == fam {
				cells[[2]string{p.From, p.To}] = p
			}
		}
		if len(cells) == 0 {
			continue
		}
		fmt.Fprintln(w)
		fmt.Fprintf(w, "PING %s (row pings column; RTT in ms)\n", fam)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		head := []string{""}
		for _, p := range res.PodList {
			head = append(head, p.Name)
		}
		fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
		for _, a := range res.PodList {
			row := []string{a.Name}
			for _, b := range res.PodList {
				c, ok := cells[[2]string{a.Name, b.Name}]
				switch {
				case a.Name == b.Name:
					row = append(row, "·")
				case !ok:
					row = append(row, "")
				case c.OK:
					row = append(row, fmt.Sprintf("✓ %.2f", c.RTTms))
				default:
					row = append(row, "✗")
				}
			}
			fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
		}
		tw.Flush()
	}

	if tp := res.Throughput; tp != nil {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "THROUGHPUT (iperf3, TCP, 2 s)")
		if tp.Error != "" {
			fmt.Fprintf(w, "  failed: %s\n", tp.Error)
		} else {
			fmt.Fprintf(w, "  %-26s %8.0f Mbit/s\n", "pod → pod ("+res.Backend+")", tp.PodToPodMbps)
			if tp.UpstreamMbps > 0 {
				fmt.Fprintf(w, "  %-26s %8.0f Mbit/s\n", "pod → pod (upstream "+res.Backend+")", tp.UpstreamMbps)
			}
			if tp.VXLANMbps > 0 {
				fmt.Fprintf(w, "  %-26s %8.0f Mbit/s\n", "kernel vxlan, same hosts", tp.VXLANMbps)
			}
			fmt.Fprintf(w, "  %-26s %8.0f Mbit/s\n", "host → host (underlay)", tp.HostToHostMbps)
			fmt.Fprintf(w, "  %-26s %8.2f\n", "ratio pod/host", tp.Ratio)
		}
	}
	fmt.Fprintln(w)
	ok := 0
	for _, p := range res.Pings {
		if p.OK {
			ok++
		}
	}
	verdict := "all pods reach each other"
	if !res.OK {
		verdict = "FAILED"
	}
	fmt.Fprintf(w, "%d/%d pings ok — %s (%.1fs)\n", ok, len(res.Pings), verdict, float64(res.Elapsed)/1e9)
	if res.Kept {
		fmt.Fprintln(w, "left running (--keep). Try:")
		fmt.Fprintln(w, "  ip netns exec wtdemo-h1-p1 ping <pod IP>")
		fmt.Fprintf(w, "  ip netns exec wtdemo-h1 bin/weft status --socket %s/h1/weft.sock\n", DefaultStateDir)
		fmt.Fprintln(w, "  bin/weft demo down        # removes it")
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
