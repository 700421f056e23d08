module txfanout.bench/ref_go

go 1.19
