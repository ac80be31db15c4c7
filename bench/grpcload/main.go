// Command grpcload is a closed-loop gRPC load client for the Open Inference Protocol's
// ModelInfer: N workers, one call in flight each, over a few shared HTTP/2 connections.
//
// The request is a ModelInferRequest serialized once by the caller (bench/grpc_loadgen.py)
// and sent as raw bytes; the answers are not decoded. So the client costs a few
// microseconds a call and the server under test, not the client, sets the rate. Prints
// one JSON line, as bench/loadgen.py does: requests, errors, seconds, requests/s, p50
// and p99 in ms.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const method = "/inference.GRPCInferenceService/ModelInfer"

// rawCodec passes bytes through: requests are encoded once, answers only counted.
// Named "proto" so that the content type is the one every server expects.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = data
	return nil
}

func (rawCodec) Name() string { return "proto" }

type worker struct {
	latencies []time.Duration
	statuses  map[string]int
	total     int
}

func main() {
	target := flag.String("target", "", "host:port of the gRPC server")
	requestFile := flag.String("request-file", "", "a serialized ModelInferRequest")
	concurrency := flag.Int("concurrency", 1, "calls in flight")
	connections := flag.Int("connections", 4, "HTTP/2 connections the workers share")
	duration := flag.Float64("duration", 10, "seconds measured")
	warmup := flag.Float64("warmup", 2, "seconds before measuring")
	procs := flag.Int("procs", 1, "GOMAXPROCS: the client shares the machine with the server")
	flag.Parse()
	if *target == "" || *requestFile == "" {
		fmt.Fprintln(os.Stderr, "grpcload: -target and -request-file are required")
		os.Exit(2)
	}
	runtime.GOMAXPROCS(*procs)
	request, err := os.ReadFile(*requestFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcload:", err)
		os.Exit(1)
	}
	conns := make([]*grpc.ClientConn, min(*connections, *concurrency))
	for i := range conns {
		conns[i], err = grpc.NewClient(*target,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		if err != nil {
			fmt.Fprintln(os.Stderr, "grpcload:", err)
			os.Exit(1)
		}
		defer conns[i].Close()
	}

	var measuring, running atomic.Bool
	running.Store(true)
	workers := make([]*worker, *concurrency)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{statuses: map[string]int{}}
		workers[i] = w
		conn := conns[i%len(conns)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for running.Load() {
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				var reply []byte
				err := conn.Invoke(ctx, method, &request, &reply)
				cancel()
				elapsed := time.Since(start)
				w.total++
				if measuring.Load() {
					code := status.Code(err).String()
					w.statuses[code]++
					if err == nil {
						w.latencies = append(w.latencies, elapsed)
					}
				}
			}
		}()
	}
	time.Sleep(time.Duration(*warmup * float64(time.Second)))
	measuring.Store(true)
	t0 := time.Now()
	time.Sleep(time.Duration(*duration * float64(time.Second)))
	measuring.Store(false)
	seconds := time.Since(t0).Seconds()
	running.Store(false)
	wg.Wait()

	var latencies []time.Duration
	statuses := map[string]int{}
	total, errors := 0, 0
	for _, w := range workers {
		latencies = append(latencies, w.latencies...)
		total += w.total
		for code, n := range w.statuses {
			statuses[code] += n
			if code != "OK" {
				errors += n
			}
		}
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	pct := func(q float64) any {
		if len(latencies) == 0 {
			return nil
		}
		i := min(len(latencies)-1, int(q*float64(len(latencies))))
		return float64(latencies[i].Microseconds()) / 1000
	}
	out, _ := json.Marshal(map[string]any{
		"requests": len(latencies), "all_requests": total, "errors": errors,
		"statuses": statuses, "seconds": seconds, "rps": float64(len(latencies)) / seconds,
		"p50_ms": pct(0.50), "p99_ms": pct(0.99),
	})
	fmt.Println(string(out))
}
