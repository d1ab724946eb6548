module example.test/service/tools

go 1.21

replace example.test/gen => C:\src\gen
