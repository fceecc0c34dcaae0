module qtap.test/gotls

go 1.21
