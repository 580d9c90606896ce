# One build for every Shop binary; compose picks a final stage per service (target:).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins \
 && mkdir -p /out \
 && find target/release -maxdepth 1 -type f -executable -exec cp {} /out/ \;

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 shop
USER shop

FROM runtime AS user-service
COPY --from=build /out/user-service /usr/local/bin/
ENTRYPOINT ["user-service"]

FROM runtime AS item-service
COPY --from=build /out/item-service /usr/local/bin/
ENTRYPOINT ["item-service"]

FROM runtime AS payment-service
COPY --from=build /out/payment-service /usr/local/bin/
ENTRYPOINT ["payment-service"]

FROM runtime AS card-gateway
COPY --from=build /out/card-gateway /usr/local/bin/
ENTRYPOINT ["card-gateway"]

FROM runtime AS gateway
COPY --from=build /out/gateway /usr/local/bin/
ENTRYPOINT ["gateway"]

FROM runtime AS shop
COPY --from=build /out/shop /usr/local/bin/
ENTRYPOINT ["shop"]
